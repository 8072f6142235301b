"""Wires the rules into the running agent (agent.app.STAGE_BUILDERS): decide, then act.

`RulesHandler` is the `Pipeline.track_handlers` entry. Per analysed frame it hands the tracker's
output to the `RuleEngine` (which decides and returns firings) and the firings to the
`RuleDispatcher` (which emits events, pulses outputs, requests snapshots and audits). It also owns
what joins the two halves: the lock between frames and live updates, the wall clock for schedules,
and the audit entry of a rule change. `RulesStage` is the lifecycle of the local outputs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from agent.capture.base import Frame
from agent.config.rules import OutputConfig, RulesConfig
from agent.events.record import EventFactory
from agent.events.thumbs import Thumbnailer
from agent.outputs import OutputBank
from agent.privacy import open_audit
from agent.rules.dispatch import Audit, EmitFn, Pulser, RuleDispatcher, SnapshotHandler
from agent.rules.engine import RuleEngine
from agent.rules.firing import FrameInput
from agent.rules.state import rules_diff, validate_rules
from agent.track import Tracker, TrackEvent

if TYPE_CHECKING:
    from agent.app import Agent, Running

log = logging.getLogger(__name__)

WallFn = Callable[[Frame], "float | None"]  # a frame's wall time (epoch s) while the clock is trusted, else None


class Outputs(Pulser, Protocol):
    """Local outputs that a live rule change can re-open (agent.outputs.OutputBank)."""

    def reconfigure(self, configs: Sequence[OutputConfig]) -> None: ...


def trusted_wall(factory: EventFactory) -> WallFn:
    """The event clock's wall time of a frame, or None while that clock is not trusted (no NTP/GNSS)."""

    def wall(frame: Frame) -> float | None:
        if not factory.clock.state().trusted:
            return None
        return factory.clock.wall_at(factory.mono_for(frame.t))

    return wall


class RulesHandler:
    """Evaluates the rule set on every frame and dispatches what fired."""

    name = "rules"

    def __init__(
        self,
        engine: RuleEngine,
        dispatcher: RuleDispatcher,
        *,
        wall: WallFn,
        outputs: Outputs | None = None,
        audit: Audit | None = None,
    ) -> None:
        self.engine = engine
        self.dispatcher = dispatcher
        self.outputs = outputs
        self.audit = audit
        self._wall = wall
        self._lock = threading.Lock()  # frames (analysis thread) against live updates and status readers
        self.errors = 0

    @classmethod
    def create(
        cls,
        cfg: RulesConfig | Mapping[str, Any],
        *,
        emit: EmitFn,
        factory: EventFactory,
        thumbnailer: Callable[[], Thumbnailer | None] = lambda: None,
        outputs: Outputs | None = None,
        audit: Audit | None = None,
        wall: WallFn | None = None,
    ) -> RulesHandler:
        """Engine and dispatcher for `cfg`, acting through these collaborators; `wall` defaults to the
        event clock (`trusted_wall(factory)`)."""
        dispatcher = RuleDispatcher(emit=emit, factory=factory, thumbnailer=thumbnailer, outputs=outputs, audit=audit)
        return cls(RuleEngine(cfg), dispatcher, wall=wall or trusted_wall(factory), outputs=outputs, audit=audit)

    @property
    def on_snapshot(self) -> SnapshotHandler | None:
        """Where snapshot requests of rules go; the control plane installs its handler here."""
        return self.dispatcher.on_snapshot

    @on_snapshot.setter
    def on_snapshot(self, handler: SnapshotHandler | None) -> None:
        self.dispatcher.on_snapshot = handler

    @property
    def reidentified(self) -> int:
        return self.engine.reidentified

    # -- the track handler ------------------------------------------------------------------------
    def __call__(self, frame: Frame, transitions: Sequence[TrackEvent], tracker: Tracker) -> None:
        with self._lock:
            try:
                firings = self.engine.evaluate(self._input(frame, transitions, tracker))
            except Exception:  # a rule bug must not stop the analysis loop; it is counted and logged
                self.errors += 1
                if self.errors in (1, 10, 100) or self.errors % 1000 == 0:
                    log.exception("rules engine failed on frame %d (%d failures so far)", frame.index, self.errors)
                return
        self.dispatcher.dispatch(firings, frame, tracker.tracks)

    def _input(self, frame: Frame, transitions: Sequence[TrackEvent], tracker: Tracker) -> FrameInput:
        h, w = frame.image.shape[:2]
        wall = self._wall(frame) if self.engine.uses_wall_clock else None
        return FrameInput(t=frame.t, width=w, height=h, tracks=tracker.tracks, transitions=transitions, wall=wall)

    # -- live configuration -----------------------------------------------------------------------
    def update(self, cfg: RulesConfig | Mapping[str, Any], *, actor: str = "config") -> RulesConfig:
        """Replace the rule set atomically (between two frames). Unchanged rules keep their state.

        Raises ConfigError (nothing changes) when the new set is invalid; re-opens changed outputs
        and records the change in the audit log with `actor` (who or what asked for it).
        """
        new_cfg = validate_rules(cfg)
        if self.outputs is not None:
            self.outputs.reconfigure(new_cfg.outputs)  # before the swap: new rules find their outputs open
        with self._lock:
            before = self.engine.config
            self.engine.update(new_cfg)
        if self.audit is not None:
            self.audit.record("rules.update", actor, rules_diff(before, new_cfg))
        log.info("rules updated by %s: %d active rule(s)", actor, sum(r.enabled for r in new_cfg.rules))
        return new_cfg

    # -- reporting ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            decided = self.engine.status()
        acted = self.dispatcher.status()
        return {
            "enabled": decided["enabled"],
            "rules": decided["rules"],
            "events": acted["events"],
            "remembered_still_objects": decided["remembered_still_objects"],
            "reidentified": decided["reidentified"],
            "snapshot_requests": acted["snapshot_requests"],
            "errors": self.errors + acted["errors"],
        }


class RulesStage:
    """Lifecycle of the rules' local outputs; the handler itself runs in the analysis loop."""

    name = "rules"

    def __init__(self, handler: RulesHandler, outputs: OutputBank) -> None:
        self.handler = handler
        self.outputs = outputs

    @property
    def engine(self) -> RulesHandler:
        """The handler under the name the control plane reaches it by (`engine.on_snapshot`, `status()`)."""
        return self.handler

    def start(self) -> None:
        self.outputs.start()

    def stop(self, deadline: float | None = None) -> None:
        self.outputs.stop(deadline)

    def update(self, cfg: RulesConfig | Mapping[str, Any], *, actor: str) -> RulesConfig:
        """Live rule change (validated, atomic, audited); see RulesHandler.update."""
        return self.handler.update(cfg, actor=actor)

    def reconfigure(self, cfg: RulesConfig, *, actor: str) -> None:
        """The rules section changed live (LiveConfig's table): the same as `update`."""
        self.handler.update(cfg, actor=actor)

    def status(self) -> dict[str, Any]:
        return {"rules": {**self.handler.status(), **self.outputs.status()}}


def build(agent: Agent, running: Running) -> RulesStage:
    """Always built (even without rules) so rules can be added live."""
    config = agent.config
    pipeline = running.pipeline
    outputs = OutputBank(config.rules.outputs)

    def thumbnailer() -> Thumbnailer | None:
        return pipeline.thumbnailer if pipeline.events_cfg.thumbnails else None  # set live too

    handler = RulesHandler.create(
        config.rules,
        emit=pipeline.emitter.emit,
        factory=pipeline.factory,
        thumbnailer=thumbnailer,
        outputs=outputs,
        audit=open_audit(running.state_dir, config.privacy.audit, running.clock),
    )
    pipeline.track_handlers.append(handler)
    return RulesStage(handler, outputs)
