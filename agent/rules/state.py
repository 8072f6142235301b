"""The rule set as the engine holds it: compiled rules with their per-object state, and the helpers
that validate a new rule set and describe what a live update changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from agent.config.loader import ConfigError, explain
from agent.config.rules import Line, Rule, RulesConfig, Zone
from agent.rules import geometry
from agent.rules.firing import Actions
from agent.rules.schedule import Schedule
from agent.track import Track

LISTS = ("zones", "lines", "outputs", "rules")


@dataclass
class ObjectState:
    """One object as one rule sees it."""

    inside: bool = False
    since: float = 0.0  # when the committed in/out state began
    pending_since: float | None = None
    baseline: bool = False  # was already inside when the rule started: it did not enter
    dwell_fired: bool = False
    left_behind_fired: bool = False
    established: bool = False  # stood in the zone for dwell_s: its going is a removal
    side: int = 0  # line rules: committed side (+1/-1), 0 before the first clear reading
    side_point: geometry.Pt | None = None


@dataclass
class Ghost:
    """A still object whose track ended: remembered until `until` in case it is found again in place."""

    track: Track
    until: float


class CompiledRule:
    """One enabled rule with its geometry, schedule and state (objects, cool-down, crowding)."""

    def __init__(self, cfg: Rule, zone: Zone | None, line: Line | None, schedule: Schedule) -> None:
        self.cfg = cfg
        self.zone = zone
        self.line = line
        self.schedule = schedule
        self.actions = Actions.of(cfg)
        self.signature = (cfg, zone, line, schedule.tz.key)
        self.started_t: float | None = None
        self.states: dict[int, ObjectState] = {}
        self.last_fire_t: float | None = None
        self.crowded = False
        self.crowd_pending_since: float | None = None
        self.fired = 0
        self.suppressed = 0

    def adopt(self, old: CompiledRule) -> None:
        """Carry the state of an unchanged rule across a live update."""
        self.started_t, self.states, self.last_fire_t = old.started_t, old.states, old.last_fire_t
        self.crowded, self.crowd_pending_since = old.crowded, old.crowd_pending_since
        self.fired, self.suppressed = old.fired, old.suppressed

    def accepts(self, track: Track, width: int, height: int) -> bool:
        c = self.cfg
        if c.classes and track.label not in c.classes:
            return False
        if track.best_score < c.min_score:
            return False
        return not (c.min_size and geometry.box_area_share(track.box, width, height) < c.min_size)


def compile_rules(cfg: RulesConfig) -> list[CompiledRule]:
    zones = {z.name: z for z in cfg.zones}
    lines = {ln.name: ln for ln in cfg.lines}
    return [
        CompiledRule(
            rule, zones.get(rule.zone or ""), lines.get(rule.line or ""), Schedule(rule.schedule, cfg.timezone)
        )
        for rule in cfg.rules
        if rule.enabled
    ]


def validate_rules(value: RulesConfig | Mapping[str, Any]) -> RulesConfig:
    """A RulesConfig from a model or a mapping (a live `config/set`); ConfigError names what is wrong."""
    if isinstance(value, RulesConfig):
        return RulesConfig.model_validate(value.model_dump())
    try:
        return RulesConfig.model_validate(dict(value))
    except ValidationError as exc:
        issues = explain(exc, value, {}).issues
        raise ConfigError(
            [replace(i, path=f"rules.{i.path}" if i.path else "rules", origin="live update") for i in issues]
        ) from None


def rules_diff(before: RulesConfig, after: RulesConfig) -> dict[str, Any]:
    """What a live update changed, by name (for the audit log; no geometry dumps)."""

    def names(items: Iterable[Any]) -> dict[str, Any]:
        return {i.name: i for i in items}

    diff: dict[str, Any] = {}
    for kind in LISTS:
        old, new = names(getattr(before, kind)), names(getattr(after, kind))
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
        if added or removed or changed:
            diff[kind] = {"added": added, "removed": removed, "changed": changed}
    settings = [k for k in RulesConfig.model_fields if k not in LISTS and getattr(before, k) != getattr(after, k)]
    if settings:
        diff["settings"] = settings
    return diff
