"""The update stage: a new release proves itself, and a rollback is reported by the release it fell back to.

On start it looks at the release state (agent.update.slots):
- a rollback nobody reported yet becomes a critical `agent_update_failed` event (with the reason the
  launcher or the failed release recorded) and an audit entry, sent by this, the previous release,
  which is known to reach the broker;
- if this very process is the release on probation, the `update-probation` thread waits until it is
  connected to the broker (when one is configured) and has analysed `frames` frames, then confirms
  it: the probation ends, older slots than the previous one go, `agent_updated` is sent. If the
  deadline passes first it records why, and stops the agent with EXIT_RESTART so the next start
  rolls back (the launcher's guard stops it anyway if it does not).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import agent as agent_pkg
from agent.events.record import add_fields
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.update import slots

if TYPE_CHECKING:
    from agent.app import Agent, Running
    from agent.events import EventPriority, EventType, UpdateFields
    from agent.privacy import AuditLog
    from agent.services import Host

log = logging.getLogger(__name__)

POLL_S = 0.5


class UpdateStage:
    name = "update"

    def __init__(self, host: Host, running: Running, audit: AuditLog, publisher: Any) -> None:
        """`host` gives the configuration and, when the probation fails, the restart that rolls back."""
        self.host = host
        self.running = running
        self.audit = audit
        self.publisher = publisher
        self.layout = slots.Layout(host.config.update.releases_dir)
        self.version = agent_pkg.__version__
        self.probation: dict[str, Any] | None = None
        self.outcome: str | None = None  # "confirmed" / "failed: …" once the probation is decided
        self._loop = BackgroundLoop("update-probation", self._watch)
        self._stop = self._loop.stopping

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> UpdateStage:
        if not self.layout.releases.is_dir():
            return self
        try:
            self._report_rollback()
            probation = slots.load_state(self.layout).get("probation")
        except (OSError, slots.SlotError) as exc:  # the node runs on; a release on probation then rolls back
            log.error("cannot use the release state in %s: %s", self.layout.releases, exc)
            return self
        if probation and probation.get("version") == self.version and self._runs_from(probation["version"]):
            self.probation = probation
            self._loop.start()
        return self

    def request_stop(self) -> None:
        self._loop.request_stop()

    def stop(self, deadline: float | None = None) -> None:
        self._loop.stop(resolve_deadline(deadline))

    def _runs_from(self, version: str) -> bool:
        """This process runs from that slot's venv (not, say, a developer's checkout of the same version)."""
        try:
            return Path(sys.prefix).resolve().is_relative_to(self.layout.slot(version).resolve())
        except (OSError, slots.SlotError):
            return False

    def _event(self, kind: EventType, priority: EventPriority, fields: UpdateFields) -> None:
        body = self.running.factory.base(kind, None, priority=priority)
        add_fields(body, fields)
        if not self.running.pipeline.emitter.emit(body):
            log.error("%s event could not be queued", kind)

    # -- rollback report --------------------------------------------------------------------------
    def _report_rollback(self) -> None:
        with slots.locked_state(self.layout) as state:
            rollback = state.get("rollback")
            if not rollback or rollback.get("reported"):
                return
            rollback["reported"] = True
        reason = str(rollback.get("reason"))
        log.error("the update to %s was rolled back to %s: %s", rollback.get("from"), rollback.get("to"), reason)
        self.audit.record("agent.update_rolled_back", "launcher", dict(rollback))
        self._event(
            "agent_update_failed",
            "critical",
            {"reason": reason, "from_version": rollback.get("from"), "to_version": self.version},
        )

    # -- probation --------------------------------------------------------------------------------
    def _watch(self, _loop: BackgroundLoop) -> None:
        probation = self.probation
        assert probation is not None
        needed = int(probation.get("frames", 30))
        timeout = float(probation.get("timeout_s", 600))
        deadline = probation.get("deadline_mono") if probation.get("boot") == slots.boot_id() else None
        deadline = float(deadline) if deadline is not None else time.monotonic() + timeout
        broker = bool(self.host.config.uplink.broker)
        reported: tuple[bool, bool] | None = None
        while not self._stop.is_set():
            connected = bool(self.publisher is not None and self.publisher.connected) if broker else True
            frames = self.running.pipeline.stats.frames
            milestone = (connected, frames >= needed)
            if milestone != reported:  # a few writes per probation, not one per frame (SD card)
                reported = milestone
                self._record_progress(connected, frames)
            if connected and frames >= needed:
                self._confirm(probation, frames)
                return
            if time.monotonic() > deadline:
                what = "did not connect to the broker" if not connected else f"analysed only {frames} frames"
                camera = self.running.capture.snapshot()
                if frames < needed and camera.state != "streaming":
                    # a camera that is away fails the probation too (the release cannot show it analyses),
                    # and the reason says so: the operator retries once the camera is back
                    what += f" (the camera was {camera.state}: {camera.reason or 'no reason given'})"
                self._fail(
                    f"release {self.version} {what} within {timeout:g} s (connected: {'yes' if connected else 'no'}, "
                    f"frames analysed: {frames} of {needed})"
                )
                return
            self._stop.wait(POLL_S)

    def _record_progress(self, connected: bool, frames: int) -> None:
        with slots.locked_state(self.layout) as state:
            record = state.get("probation")
            if record and record.get("version") == self.version:
                record["progress"] = {"connected": connected, "frames": frames}

    def _confirm(self, probation: dict[str, Any], frames: int) -> None:
        previous = probation.get("from")
        with slots.locked_state(self.layout) as state:
            record = state.pop("probation", None)
            if not record or record.get("version") != self.version:
                return
            state["good"] = self.version
            state.get("failed", {}).pop(self.version, None)
        removed = slots.prune(self.layout, keep={v for v in (self.version, previous) if v})
        self.outcome = "confirmed"
        log.info("release %s confirmed (connected, %d frames analysed); kept %s to roll back to", self.version,
                 frames, previous or "the legacy venv")
        self.audit.record(
            "agent.update_confirmed", "probation", {"version": self.version, "from": previous, "removed": removed}
        )
        self._event("agent_updated", "normal", {"from_version": previous, "to_version": self.version})

    def _fail(self, reason: str) -> None:
        with slots.locked_state(self.layout) as state:
            record = state.get("probation")
            if record and record.get("version") == self.version:
                record["failure"] = reason
        self.outcome = f"failed: {reason}"
        log.error("probation failed: %s; stopping so that the next start rolls back", reason)
        self.audit.record("agent.update_failed", "probation", {"version": self.version, "reason": reason})
        self.host.restart()

    def status(self) -> dict[str, Any]:
        return {
            "release": self.version,
            "slot": slots.current(self.layout),
            "probation": bool(self.probation) and self.outcome is None,
            "outcome": self.outcome,
        }


def build(agent: Agent, running: Running) -> UpdateStage | None:
    """Built when updates are on; it does nothing unless a release area exists (a node with slots)."""
    if not agent.config.update.enabled:
        return None
    health = running.services.health
    if health is None:
        return None
    return UpdateStage(agent, running, health.privacy.audit, running.services.publisher)
