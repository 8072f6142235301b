"""The rules engine: decides which zone, dwell, line, crowding and stationary-change rules fire.

`RuleEngine.evaluate(FrameInput) -> list[Firing]` is pure apart from the engine's own state: it
reads the frame's tracks and returns frozen firings, and performs nothing (no events, GPIO,
snapshots or audit entries: that is `agent.rules.dispatch.RuleDispatcher`, and
`agent.rules.stage.RulesHandler` connects both to the pipeline). So every rule can be tested by
feeding tracks and asserting the firings.

Durations are stream time (`FrameInput.t`); wall time is read only for schedules. `update()`
replaces the rule set (validated by the same models as the config file); rules that did not change
keep their state.

Robustness against the street (field notes: parked cars re-triggering on headlights and shadows):
- membership of an object in a zone changes only after `debounce_s` and never while the tracker
  calls the object stationary, so a parked car whose box flickers with the light stays put;
- a still object whose track is lost (darkness) is remembered for `stationary_memory_s`; found
  again in the same place it keeps its state, so nothing enters, is left behind or removed again;
- objects already present at start (or when a rule is added) did not enter (`warmup_s`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from agent.config.rules import Line, RulesConfig, Zone
from agent.rules import geometry
from agent.rules.firing import Firing, FiringKind, FiringTrack, FrameInput
from agent.rules.geometry import CrossingDirection, PixelBox
from agent.rules.state import CompiledRule, Ghost, ObjectState, compile_rules, validate_rules
from agent.track import Track, iou

log = logging.getLogger(__name__)

REIDENTIFY_MIN_IOU = 0.5  # a new track this much on top of a remembered still object is that object


class RuleEngine:
    """Decides, frame by frame, which rules fire. Holds the per-object state of every rule.

    Not thread-safe by itself: one caller at a time (`RulesHandler` serialises frames and updates).
    """

    def __init__(self, cfg: RulesConfig | Mapping[str, Any]) -> None:
        self.config = validate_rules(cfg)
        self._rules = compile_rules(self.config)
        self.uses_wall_clock = _scheduled_rules(self._rules)
        self._t0: float | None = None
        self._ghosts: list[Ghost] = []
        self.reidentified = 0

    def update(self, cfg: RulesConfig | Mapping[str, Any]) -> RulesConfig:
        """Replace the rule set; rules whose definition, zone and line did not change keep their state.

        Raises ConfigError (and changes nothing) when the new set is invalid.
        """
        new_cfg = validate_rules(cfg)
        compiled = compile_rules(new_cfg)
        old = {r.cfg.name: r for r in self._rules}
        for rule in compiled:
            previous = old.get(rule.cfg.name)
            if previous is not None and previous.signature == rule.signature:
                rule.adopt(previous)
        self._rules, self.config = compiled, new_cfg
        self.uses_wall_clock = _scheduled_rules(compiled)
        return new_cfg

    def evaluate(self, frame: FrameInput) -> list[Firing]:
        """The firings of one frame, in the order the rules decided them."""
        if not self.config.enabled:
            return []
        if self._t0 is None:
            self._t0 = frame.t
        step = _Step(frame)
        for event in frame.transitions:
            if event.kind == "object_appeared":
                self._reidentify(event.track)
        for event in frame.transitions:
            if event.kind == "object_left":
                if event.track.stationary and self.config.stationary_memory_s > 0:
                    self._ghosts.append(Ghost(event.track, frame.t + self.config.stationary_memory_s))
                else:
                    self._end(event.track, step)
        for ghost in [g for g in self._ghosts if g.until < frame.t]:
            self._ghosts.remove(ghost)
            self._end(ghost.track, step)
        live = [tr for tr in frame.tracks if tr.confirmed]
        keep_ids = {tr.track_id for tr in live} | {g.track.track_id for g in self._ghosts}
        for rule in self._rules:
            if rule.started_t is None:
                rule.started_t = frame.t
            if rule.cfg.type == "line_crossing":
                self._lines(rule, live, step)
            else:
                self._zone(rule, live, step)
            for stale in [k for k in rule.states if k not in keep_ids]:
                del rule.states[stale]
        return step.firings

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.config.enabled,
            "rules": {
                r.cfg.name: {"type": r.cfg.type, "fired": r.fired, "suppressed": r.suppressed} for r in self._rules
            },
            "remembered_still_objects": len(self._ghosts),
            "reidentified": self.reidentified,
        }

    # -- stationary memory ------------------------------------------------------------------------
    def _reidentify(self, track: Track) -> None:
        best, best_overlap = None, REIDENTIFY_MIN_IOU
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

    def _end(self, track: Track, step: _Step) -> None:
        """The object is gone for good: close its zone visits."""
        for rule in self._rules:
            state = rule.states.pop(track.track_id, None)
            if state is None or rule.cfg.type == "line_crossing" or not state.inside:
                continue
            self._left_zone(rule, track, state, track.last_seen, step)

    # -- zones --------------------------------------------------------------------------------------
    def _zone(self, rule: CompiledRule, live: list[Track], step: _Step) -> None:
        assert rule.zone is not None and rule.started_t is not None
        cfg, t, w, h, anchor = rule.cfg, step.frame.t, step.frame.width, step.frame.height, self.config.anchor
        polygon = step.polygon(rule.zone)
        for track in live:
            raw = rule.accepts(track, w, h) and geometry.inside(geometry.anchor_point(track.box, anchor), polygon)
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
                        self._fire(rule, "zone_enter", step, track)
                else:
                    self._left_zone(rule, track, state, changed_at, step)
                    state.inside, state.since = False, changed_at
            if state.inside:
                self._while_inside(rule, track, state, step)
        if cfg.type == "crowding":
            self._crowding(rule, live, step)

    def _while_inside(self, rule: CompiledRule, track: Track, state: ObjectState, step: _Step) -> None:
        cfg = rule.cfg
        stayed = step.frame.t - state.since
        if cfg.type == "dwell" and not state.dwell_fired and stayed >= cfg.dwell_s:
            state.dwell_fired = True
            self._fire(rule, "dwell", step, track, duration_s=round(stayed, 2))
        elif cfg.type == "object_left_behind" and track.stationary and stayed >= cfg.dwell_s:
            if not state.left_behind_fired and not state.baseline:
                self._fire(rule, "object_left_behind", step, track, duration_s=round(stayed, 2))
            state.left_behind_fired = True
        elif cfg.type == "object_removed" and track.stationary and stayed >= cfg.dwell_s:
            state.established = True

    def _left_zone(self, rule: CompiledRule, track: Track, state: ObjectState, at: float, step: _Step) -> None:
        stayed = round(max(0.0, at - state.since), 2)
        if rule.cfg.type == "zone_exit":
            self._fire(rule, "zone_exit", step, track, duration_s=stayed)
        elif rule.cfg.type == "object_removed" and state.established:
            self._fire(rule, "object_removed", step, track, duration_s=stayed)
        state.established = False

    def _crowding(self, rule: CompiledRule, live: list[Track], step: _Step) -> None:
        t = step.frame.t
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
            self._fire(rule, "crowding", step, None, count=count, region=tuple(tr.box for tr in inside))

    # -- lines --------------------------------------------------------------------------------------
    def _lines(self, rule: CompiledRule, live: list[Track], step: _Step) -> None:
        assert rule.line is not None
        a, b = step.segment(rule.line)
        margin = self.config.line_margin * step.diagonal
        w, h, anchor = step.frame.width, step.frame.height, self.config.anchor
        for track in live:
            if track.stationary or not rule.accepts(track, w, h):
                continue
            point = geometry.anchor_point(track.box, anchor)
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
                        self._fire(rule, "line_crossing", step, track, direction=direction)
            state.side, state.side_point = side, point

    # -- the decision to fire -----------------------------------------------------------------------
    def _fire(
        self,
        rule: CompiledRule,
        kind: FiringKind,
        step: _Step,
        track: Track | None,
        *,
        duration_s: float | None = None,
        direction: CrossingDirection | None = None,
        count: int | None = None,
        region: tuple[PixelBox, ...] = (),
    ) -> None:
        """Record a firing unless the rule's schedule or cool-down holds it back (counted as suppressed)."""
        t = step.frame.t
        if not self._scheduled(rule, step.frame):
            rule.suppressed += 1
            return
        if rule.last_fire_t is not None and t - rule.last_fire_t < rule.cfg.cooldown_s:
            rule.suppressed += 1
            return
        rule.last_fire_t = t
        rule.fired += 1
        step.firings.append(
            Firing(
                rule=rule.cfg.name,
                kind=kind,
                t=t,
                actions=rule.actions,
                zone=rule.cfg.zone,
                line=rule.cfg.line,
                track=FiringTrack.of(track) if track is not None else None,
                region=region,
                duration_s=duration_s,
                direction=direction,
                count=count,
            )
        )

    def _scheduled(self, rule: CompiledRule, frame: FrameInput) -> bool:
        if rule.schedule.always:
            return True
        if frame.wall is None:  # the clock is not trusted (no NTP or GNSS yet)
            return self.config.untrusted_clock == "active"
        return rule.schedule.active(frame.wall)


def _scheduled_rules(rules: list[CompiledRule]) -> bool:
    """Whether any rule has a schedule: only then does `FrameInput.wall` matter (and is worth reading)."""
    return any(not rule.schedule.always for rule in rules)


class _Step:
    """One evaluation: the frame, its pixel geometry (computed once for every rule) and the firings so far."""

    def __init__(self, frame: FrameInput) -> None:
        self.frame = frame
        self.diagonal = (frame.width**2 + frame.height**2) ** 0.5
        self.firings: list[Firing] = []

    def polygon(self, zone: Zone) -> list[geometry.Pt]:
        return geometry.to_pixels(zone.polygon, self.frame.width, self.frame.height)

    def segment(self, line: Line) -> tuple[geometry.Pt, geometry.Pt]:
        a, b = geometry.to_pixels(line.points, self.frame.width, self.frame.height)
        return a, b
