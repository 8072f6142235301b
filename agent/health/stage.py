"""The health stage: camera health, the frame tap, the status collector and periodic telemetry.

One `health` thread wakes about once a second (and at once when the capture stage loses or regains
its source) to judge the camera (agent.health.camera) and, every
`telemetry.interval_s`, offers a compact telemetry record to the spool at the lowest priority
(Priority.TELEMETRY: evicted first when the spool is full, sent last). Telemetry is built from
the stages' own `status()` methods (agent.health.status), not from their internals.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from agent.health.camera import CameraHealth
from agent.health.frames import FrameTap
from agent.health.privacy import PrivacyAccess
from agent.health.status import TELEMETRY_FIELDS, StatusCollector, camera_flags
from agent.health.system import SystemProbe
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.privacy.publication import HeadPublication
from agent.uplink.spool import Outgoing, Priority

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.app import Agent, Running
    from agent.config.schema import Config
    from agent.systemd import Notifier

log = logging.getLogger(__name__)

TELEMETRY_STREAM = "telemetry"


class HealthStage:
    name = "health"

    def __init__(self, config: Callable[[], Config], running: Running, notifier: Notifier) -> None:
        """`config` returns the running configuration (live changes included); `notifier` tells systemd
        what the node does about its camera."""
        self.config = config
        self.running = running
        self.notifier = notifier
        pipeline = running.pipeline
        self.tap = FrameTap(lambda: int(getattr(pipeline.detector, "frames", 0)))
        self.camera = CameraHealth(
            config().health, running.capture, pipeline.emitter, running.factory, on_change=self._camera_changed
        )
        self.system = SystemProbe(running.state_dir)
        self.collector = StatusCollector(config, running, self.system)
        self.privacy = PrivacyAccess(config, running.services, running.state_dir, running.clock)
        self.telemetry_sent = 0
        self.telemetry_refused = 0
        self._loop = BackgroundLoop("health", self._run)
        self._stop = self._loop.stopping
        self._wake = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> HealthStage:
        self._loop.start()
        return self

    def request_stop(self) -> None:
        self._loop.request_stop()
        self._wake.set()
        self.tap.wake_all()

    def stop(self, deadline: float | None = None) -> None:
        self._loop.request_stop()
        self._wake.set()
        self.tap.wake_all()
        self._loop.join(resolve_deadline(deadline))

    def _run(self, _loop: BackgroundLoop) -> None:
        next_telemetry = time.monotonic() + min(10.0, self.config().telemetry.interval_s)
        while not self._stop.is_set():
            try:
                self.camera.check()
                self.collector.rates.rates()  # keep the fps window filled between reports
                cfg = self.config().telemetry
                now = time.monotonic()
                if cfg.enabled and now >= next_telemetry:
                    self.publish_telemetry()
                    next_telemetry = now + cfg.interval_s
                else:
                    next_telemetry = min(next_telemetry, now + cfg.interval_s)  # a shorter interval set live
            except Exception:  # telemetry must never take the agent down
                log.exception("health check failed")
            self._wake.wait(1.0)
            self._wake.clear()

    # -- telemetry --------------------------------------------------------------------------------
    def publish_telemetry(self) -> dict[str, Any]:
        body = self.collector.telemetry()
        if self.running.spool.accept([Outgoing(TELEMETRY_STREAM, Priority.TELEMETRY, "telemetry", body)]):
            self.telemetry_sent += 1
        else:
            self.telemetry_refused += 1
        return body

    # -- the retained status topic ------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Added to the retained `status` message: what an operator wants at a glance.

        The camera flag is the debounced one (what the last camera event said), so a stream that
        blinks does not re-publish a retained message each time."""
        tamper = self.running.services.tamper
        stages = {"health": {"camera": {"state": self.camera.reported_state()}}}
        if tamper is not None:
            stages["tamper"] = tamper.status()
        info = self.running.detector.info()
        return {"camera": camera_flags(stages), "model": info.get("name"), "model_sha256": info.get("sha256")}

    def wake(self) -> None:
        """Judge the camera now rather than at the next tick (the capture stage lost or regained it)."""
        self._wake.set()

    def _camera_changed(self) -> None:
        self.notifier.status(self.systemd_status())
        publisher = self.running.services.publisher
        if publisher is not None:
            publisher.refresh_status()

    def systemd_status(self) -> str:
        """One line for `systemctl status` (STATUS=): what the node is doing about its camera."""
        camera = self.camera.status()
        state = camera["reported"]
        if state == "unstable":
            return f"{self.running.capture.status_line()}; camera unstable ({camera['unstable']['drops']} drops)"
        if state in camera["problems"]:
            return f"camera {state}: {camera['problems'][state]}; retrying, everything else runs"
        return self.running.capture.status_line()

    def status(self) -> dict[str, Any]:
        telemetry = self.config().telemetry
        return {
            "camera": self.camera.status(),
            "telemetry": {
                "enabled": telemetry.enabled,
                "interval_s": telemetry.interval_s,
                "sent": self.telemetry_sent,
                "refused": self.telemetry_refused,
            },
        }


def build(agent: Agent, running: Running) -> HealthStage:
    """Always built: camera health and the frame tap are needed by control and the status page too."""
    stage = HealthStage(lambda: agent.config, running, agent.notifier)
    running.pipeline.observers.append(stage.tap)
    running.pipeline.observers.append(stage.camera)
    previous = running.capture.on_state

    def on_state(state: str, reason: str) -> None:
        previous(state, reason)
        stage.wake()

    running.capture.on_state = on_state
    HeadPublication(stage.privacy.audit).attach(running.spool)  # telemetry carries the audit head
    publisher = running.services.publisher
    if publisher is not None:
        publisher.set_status_extra(stage.summary)
    return stage


def disclose(config: Config) -> list[dict[str, Any]]:
    """For `agent privacy report`: the periodic telemetry record."""
    if not config.uplink.broker or not config.telemetry.enabled:
        return []
    return [
        {
            "name": "telemetry",
            "topic": f"{config.uplink.topic_prefix}/{config.node.id}/telemetry",
            "content": f"one small JSON record every {config.telemetry.interval_s:g} s about the node itself: "
            "no images, no objects, no people",
            "fields": [{"field": name, "meaning": meaning} for name, meaning in TELEMETRY_FIELDS.items()],
        }
    ]
