"""The rules engine: zone, dwell, line, crowding and stationary-change rules over the tracker's output.

It is a `Pipeline.track_handlers` entry, called once per analysed frame with the tracker's
transitions. Durations are stream time (`Frame.t`); wall time is read only for schedules. The rule
set is swapped atomically by `update()` (validated by the same models as the config file), so the
control plane can change zones and rules live; rules that did not change keep their state.

Robustness against the street (field notes: parked cars re-triggering on headlights and shadows):
- membership of an object in a zone changes only after `debounce_s` and never while the tracker
  calls the object stationary, so a parked car whose box flickers with the light stays put;
- a still object whose track is lost (darkness) is remembered for `stationary_memory_s`; found
  again in the same place it keeps its state, so nothing enters, is left behind or removed again;
- objects already present at start (or when a rule is added) did not enter (`warmup_s`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from agent.capture.base import Frame
from agent.config.loader import ConfigError, explain
from agent.config.rules import Line, Rule, RulesConfig, Zone
from agent.events.record import EventFactory, normalise
from agent.events.thumbs import Thumbnail, Thumbnailer
from agent.rules import geometry
from agent.rules.schedule import Schedule
from agent.track import Track, Tracker, TrackEvent, iou

log = logging.getLogger(__name__)

EmitFn = Callable[[dict[str, Any], Thumbnail | None], bool]
REGION_THUMB_MAX_SHARE = 0.5  # a crop bigger than this share of the frame is not a thumbnail any more


@dataclass
class SnapshotRequest:
    """A rule asked for a full frame. The control plane's snapshot command serves it (redacted, audited)."""

    rule: str
    zone: str | None
    event_type: str
    track: int | None
    t: float
    frame: Frame = field(repr=False)


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


class CompiledRule:
    def __init__(self, cfg: Rule, zone: Zone | None, line: Line | None, schedule: Schedule) -> None:
        self.cfg = cfg
        self.zone = zone
        self.line = line
        self.schedule = schedule
        self.signature = (cfg, zone, line, schedule.tz.key)
        self.target = cfg.zone or cfg.line or ""
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


@dataclass
class Ghost:
    track: Track
    until: float


def compile_rules(cfg: RulesConfig) -> list[CompiledRule]:
    zones = {z.name: z for z in cfg.zones}
    lines = {ln.name: ln for ln in cfg.lines}
    compiled = []
    for rule in cfg.rules:
        if not rule.enabled:
            continue
        compiled.append(
            CompiledRule(
                rule,
                zones.get(rule.zone or ""),
                lines.get(rule.line or ""),
                Schedule(rule.schedule, cfg.timezone),
            )
        )
    return compiled


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


class RuleEngine:
    """Evaluates the rule set on every frame and emits rule events through `emit`."""

    name = "rules"

    def __init__(
        self,
        cfg: RulesConfig,
        *,
        emit: EmitFn,
        factory: EventFactory,
        thumbnailer: Callable[[], Thumbnailer | None] = lambda: None,
        outputs: Any = None,
        audit: Any = None,
        wall: Callable[[Frame], float] | None = None,
        clock_trusted: Callable[[], bool] | None = None,
    ) -> None:
        self._emit = emit
        self.factory = factory
        self._thumbnailer = thumbnailer
        self.outputs = outputs
        self.audit = audit
        self._wall = wall or (lambda frame: factory.clock.wall_at(factory.mono_for(frame.t)))
        self._clock_trusted = clock_trusted or (lambda: factory.clock.state().trusted)
        self.on_snapshot: Callable[[SnapshotRequest], None] | None = None
        self._lock = threading.Lock()
        self._t0: float | None = None
        self._ghosts: list[Ghost] = []
        self.reidentified = 0
        self.emitted = 0
        self.snapshot_requests = 0
        self._warned_no_snapshot = False
        self.errors = 0
        self.config = validate_rules(cfg)
        self._rules = compile_rules(self.config)

    # -- live configuration -----------------------------------------------------------------------
    def update(self, cfg: RulesConfig | Mapping[str, Any], *, actor: str = "config") -> RulesConfig:
        """Replace the rule set atomically (between two frames). Unchanged rules keep their state.

        Raises ConfigError (nothing changes) when the new set is invalid; records the change in
        the audit log with `actor` (who or what asked for it).
        """
        new_cfg = validate_rules(cfg)
        compiled = compile_rules(new_cfg)
        if self.outputs is not None and hasattr(self.outputs, "reconfigure"):
            self.outputs.reconfigure(new_cfg.outputs)
        with self._lock:
            old = {r.cfg.name: r for r in self._rules}
            for rule in compiled:
                previous = old.get(rule.cfg.name)
                if previous is not None and previous.signature == rule.signature:
                    rule.adopt(previous)
            before = self.config
            self._rules, self.config = compiled, new_cfg
        if self.audit is not None:
            self.audit.record("rules.update", actor, _rules_diff(before, new_cfg))
        log.info("rules updated by %s: %d active rule(s)", actor, len(compiled))
        return new_cfg

    # -- the track handler ------------------------------------------------------------------------
    def __call__(self, frame: Frame, transitions: Sequence[TrackEvent], tracker: Tracker) -> None:
        with self._lock:
            if not self.config.enabled:
                return
            try:
                self._step(frame, transitions, tracker)
            except Exception:  # a rule bug must not stop the analysis loop; it is counted and logged
                self.errors += 1
                if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                    log.exception("rules engine failed on frame %d (%d failures so far)", frame.index, self.errors)

    def _step(self, frame: Frame, transitions: Sequence[TrackEvent], tracker: Tracker) -> None:
        t = frame.t
        if self._t0 is None:
            self._t0 = t
        h, w = frame.image.shape[:2]
        ctx = _FrameContext(self, frame, tracker, w, h)
        for event in transitions:
            if event.kind == "object_appeared":
                self._reidentify(event.track)
        for event in transitions:
            if event.kind == "object_left":
                if event.track.stationary and self.config.stationary_memory_s > 0:
                    self._ghosts.append(Ghost(event.track, t + self.config.stationary_memory_s))
                else:
                    self._end(event.track, ctx)
        for ghost in [g for g in self._ghosts if g.until < t]:
            self._ghosts.remove(ghost)
            self._end(ghost.track, ctx)
        live = [tr for tr in tracker.tracks if tr.confirmed]
        keep_ids = {tr.track_id for tr in live} | {g.track.track_id for g in self._ghosts}
        for rule in self._rules:
            if rule.started_t is None:
                rule.started_t = t
            if rule.cfg.type == "line_crossing":
                self._lines(rule, live, ctx)
            else:
                self._zone(rule, live, ctx)
            for stale in [k for k in rule.states if k not in keep_ids]:
                del rule.states[stale]

    # -- stationary memory ------------------------------------------------------------------------
    def _reidentify(self, track: Track) -> None:
        best, best_overlap = None, 0.5
        for ghost in self._ghosts:
            overlap = iou(ghost.track.box, track.box)
            if ghost.track.label == track.label and overlap >= best_overlap:
                best, best_overlap = ghost, overlap
        if best is None:
            return
        self._ghosts.remove(best)
        self.reidentified += 1
        old_id = best.track.track_id
        for rule in self._rules:
            if old_id in rule.states:
                rule.states[track.track_id] = rule.states.pop(old_id)
        log.debug("track %d is still object %d (found again in place)", track.track_id, old_id)

    def _end(self, track: Track, ctx: _FrameContext) -> None:
        """The object is gone for good: close its zone visits."""
        for rule in self._rules:
            state = rule.states.pop(track.track_id, None)
            if state is None or rule.cfg.type == "line_crossing" or not state.inside:
                continue
            self._left_zone(rule, track, state, track.last_seen, ctx)

    # -- zones --------------------------------------------------------------------------------------
    def _zone(self, rule: CompiledRule, live: list[Track], ctx: _FrameContext) -> None:
        assert rule.zone is not None and rule.started_t is not None
        cfg, t = rule.cfg, ctx.frame.t
        polygon = ctx.polygon(rule.zone)
        for track in live:
            raw = rule.accepts(track, ctx.w, ctx.h) and geometry.inside(
                geometry.anchor_point(track.box, self.config.anchor), polygon
            )
            state = rule.states.get(track.track_id)
            if state is None:
                baseline = raw and track.first_seen <= max(rule.started_t, self._t0 or 0.0) + self.config.warmup_s
                state = rule.states[track.track_id] = ObjectState(inside=baseline, since=t, baseline=baseline)
            if raw == state.inside or track.stationary:
                state.pending_since = None  # a still object neither enters nor leaves
            elif state.pending_since is None:
                state.pending_since = t
            if state.pending_since is not None and t - state.pending_since >= self.config.debounce_s:
                changed_at, state.pending_since = state.pending_since, None
                if raw:
                    state.inside, state.since, state.baseline = True, changed_at, False
                    state.dwell_fired = state.left_behind_fired = state.established = False
                    if cfg.type == "zone_enter":
                        self._fire(rule, "zone_enter", ctx, track)
                else:
                    self._left_zone(rule, track, state, changed_at, ctx)
                    state.inside, state.since = False, changed_at
            if state.inside:
                self._while_inside(rule, track, state, ctx)
        if cfg.type == "crowding":
            self._crowding(rule, live, ctx)

    def _while_inside(self, rule: CompiledRule, track: Track, state: ObjectState, ctx: _FrameContext) -> None:
        cfg, t = rule.cfg, ctx.frame.t
        stayed = t - state.since
        if cfg.type == "dwell" and not state.dwell_fired and stayed >= cfg.dwell_s:
            state.dwell_fired = True
            self._fire(rule, "dwell", ctx, track, {"duration_s": round(stayed, 2)})
        elif cfg.type == "object_left_behind" and track.stationary and stayed >= cfg.dwell_s:
            if not state.left_behind_fired and not state.baseline:
                self._fire(rule, "object_left_behind", ctx, track, {"duration_s": round(stayed, 2)})
            state.left_behind_fired = True
        elif cfg.type == "object_removed" and track.stationary and stayed >= cfg.dwell_s:
            state.established = True

    def _left_zone(
        self, rule: CompiledRule, track: Track, state: ObjectState, at: float, ctx: _FrameContext
    ) -> None:
        stayed = round(max(0.0, at - state.since), 2)
        if rule.cfg.type == "zone_exit":
            self._fire(rule, "zone_exit", ctx, track, {"duration_s": stayed})
        elif rule.cfg.type == "object_removed" and state.established:
            self._fire(rule, "object_removed", ctx, track, {"duration_s": stayed})
        state.established = False

    def _crowding(self, rule: CompiledRule, live: list[Track], ctx: _FrameContext) -> None:
        t = ctx.frame.t
        ids = {tr.track_id for tr in live}
        inside = [tr for tr in live if (s := rule.states.get(tr.track_id)) is not None and s.inside]
        count = len(inside) + sum(1 for k, s in rule.states.items() if s.inside and k not in ids)
        above = count > rule.cfg.max_count
        if above == rule.crowded:
            rule.crowd_pending_since = None
            return
        if rule.crowd_pending_since is None:
            rule.crowd_pending_since = t
        if t - rule.crowd_pending_since < rule.cfg.hold_s:
            return
        rule.crowded, rule.crowd_pending_since = above, None
        if above:
            self._fire(rule, "crowding", ctx, None, {"count": count}, region=[tr.box for tr in inside])

    # -- lines --------------------------------------------------------------------------------------
    def _lines(self, rule: CompiledRule, live: list[Track], ctx: _FrameContext) -> None:
        assert rule.line is not None
        a, b = ctx.segment(rule.line)
        margin = self.config.line_margin * ctx.diagonal
        for track in live:
            if track.stationary or not rule.accepts(track, ctx.w, ctx.h):
                continue
            point = geometry.anchor_point(track.box, self.config.anchor)
            distance = geometry.signed_distance(point, a, b)
            if abs(distance) <= margin:
                continue  # on the line: wait for a clear side
            side = 1 if distance > 0 else -1
            state = rule.states.setdefault(track.track_id, ObjectState())
            if state.side and side != state.side and state.side_point is not None:
                start = state.side_point
                if geometry.crosses_segment(start, point, a, b, slack=margin):
                    move = (point[0] - start[0], point[1] - start[1])
                    direction = geometry.direction_name(move, a, b)
                    if rule.cfg.direction in ("any", direction):
                        self._fire(rule, "line_crossing", ctx, track, {"direction": direction})
            state.side, state.side_point = side, point

    # -- actions ------------------------------------------------------------------------------------
    def _fire(
        self,
        rule: CompiledRule,
        kind: str,
        ctx: _FrameContext,
        track: Track | None,
        extra: dict[str, Any] | None = None,
        *,
        region: Sequence[geometry.PixelBox] = (),
    ) -> None:
        cfg, frame = rule.cfg, ctx.frame
        if not self._scheduled(rule, ctx):
            rule.suppressed += 1
            return
        if rule.last_fire_t is not None and frame.t - rule.last_fire_t < cfg.cooldown_s:
            rule.suppressed += 1
            return
        rule.last_fire_t = frame.t
        rule.fired += 1
        try:
            self._act(rule, kind, ctx, track, extra, region)
        except Exception:  # the event is lost (counted); the rule's state has moved on regardless
            self.errors += 1
            log.exception("rule %s: %s event failed", cfg.name, kind)

    def _act(
        self,
        rule: CompiledRule,
        kind: str,
        ctx: _FrameContext,
        track: Track | None,
        extra: dict[str, Any] | None,
        region: Sequence[geometry.PixelBox],
    ) -> None:
        cfg, frame = rule.cfg, ctx.frame
        fields = {"rule": cfg.name, "zone": rule.target, **(extra or {})}
        if track is not None:
            body = self.factory.from_track(kind, track, frame, priority=cfg.priority, extra=fields)
            box: tuple[float, float, float, float] | None = tuple(normalise(track.box, ctx.w, ctx.h))
        else:
            body = self.factory.base(kind, frame, priority=cfg.priority)
            body.update(fields)
            box = None
            if region:
                union = (
                    min(r[0] for r in region),
                    min(r[1] for r in region),
                    max(r[2] for r in region),
                    max(r[3] for r in region),
                )
                box = tuple(normalise(union, ctx.w, ctx.h))
                body["bbox"] = list(box)
                if (box[2] - box[0]) * (box[3] - box[1]) > REGION_THUMB_MAX_SHARE:
                    box = None  # that would be most of the frame: full frames leave only as snapshots
        thumb = None
        thumbnailer = self._thumbnailer()
        if cfg.thumbnail and box is not None and thumbnailer is not None:
            thumb = thumbnailer(frame, box, ctx.objects())
        if self._emit(body, thumb):
            self.emitted += 1
        if cfg.output and self.outputs is not None:
            self.outputs.pulse(cfg.output, cfg.output_s)
        if cfg.snapshot:
            self._request_snapshot(rule, kind, track, frame)

    def _scheduled(self, rule: CompiledRule, ctx: _FrameContext) -> bool:
        if rule.schedule.always:
            return True
        if not self._clock_trusted():
            return self.config.untrusted_clock == "active"
        return rule.schedule.active(ctx.wall())

    def _request_snapshot(self, rule: CompiledRule, kind: str, track: Track | None, frame: Frame) -> None:
        self.snapshot_requests += 1
        request = SnapshotRequest(
            rule.cfg.name, rule.target, kind, track.track_id if track else None, frame.t, frame
        )
        handler = self.on_snapshot
        if self.audit is not None:
            self.audit.record(
                "snapshot.request",
                f"rule:{rule.cfg.name}",
                {"event": kind, "zone": rule.target, "track": request.track, "handled": handler is not None},
            )
        if handler is None:
            if not self._warned_no_snapshot:
                self._warned_no_snapshot = True
                log.warning("rule %s requested a snapshot, but no snapshot handler is installed", rule.cfg.name)
            return
        try:
            handler(request)
        except Exception:
            log.exception("snapshot handler failed for rule %s", rule.cfg.name)

    # -- reporting ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "enabled": self.config.enabled,
                "rules": {
                    r.cfg.name: {"type": r.cfg.type, "fired": r.fired, "suppressed": r.suppressed}
                    for r in self._rules
                },
                "events": self.emitted,
                "remembered_still_objects": len(self._ghosts),
                "reidentified": self.reidentified,
                "snapshot_requests": self.snapshot_requests,
                "errors": self.errors,
            }


class _FrameContext:
    """Per-frame values computed once and shared by every rule (pixel geometry, wall time, objects)."""

    def __init__(self, engine: RuleEngine, frame: Frame, tracker: Tracker, w: int, h: int) -> None:
        self.engine, self.frame, self.tracker, self.w, self.h = engine, frame, tracker, w, h
        self.diagonal = (w * w + h * h) ** 0.5
        self._wall: float | None = None

    def polygon(self, zone: Zone) -> list[geometry.Pt]:
        return geometry.to_pixels(zone.polygon, self.w, self.h)

    def segment(self, line: Line) -> tuple[geometry.Pt, geometry.Pt]:
        a, b = geometry.to_pixels(line.points, self.w, self.h)
        return a, b

    def wall(self) -> float:
        if self._wall is None:
            self._wall = self.engine._wall(self.frame)
        return self._wall

    def objects(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        return [(tr.label, tuple(normalise(tr.box, self.w, self.h))) for tr in self.tracker.tracks]


def _rules_diff(before: RulesConfig, after: RulesConfig) -> dict[str, Any]:
    """What a live update changed, by name (for the audit log; no geometry dumps)."""

    def names(items: Iterable[Any]) -> dict[str, Any]:
        return {i.name: i for i in items}

    diff: dict[str, Any] = {}
    for kind in ("zones", "lines", "outputs", "rules"):
        old, new = names(getattr(before, kind)), names(getattr(after, kind))
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
        if added or removed or changed:
            diff[kind] = {"added": added, "removed": removed, "changed": changed}
    settings = [
        k for k in RulesConfig.model_fields if k not in ("zones", "lines", "outputs", "rules")
        if getattr(before, k) != getattr(after, k)
    ]
    if settings:
        diff["settings"] = settings
    return diff
