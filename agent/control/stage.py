"""The control plane: commands over MQTT, served one at a time on the `control` thread.

Requests arrive on ``{prefix}/{node}/cmd/{name}`` through the publisher's subscription, on the
uplink thread, which must never wait: the handler only checks the size and hands the raw payload to
a bounded queue (full: an immediate "busy" error). The `control` thread parses, validates, runs and
replies. Replies go out like everything else, through the spool, at Priority.CRITICAL: they are few
and small (one per request, requests are bounded by the queue), an operator is waiting for them,
and a reply queued during an outage must not be evicted or wait behind a thumbnail backlog; they
survive restarts and arrive (marked `historical`) once the link is back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.control.args import Context, ProgressFn, ReplyFn
from agent.control.commands import COMMANDS
from agent.control.gate import CommandGate
from agent.control.live import LiveConfig
from agent.control.model_update import ModelUpdater
from agent.control.persist import ConfigStore
from agent.control.protocol import (
    CommandError,
    describe_validation,
    parse_request,
    reply,
    salvage_id,
)
from agent.control.snapshot import Snapshotter
from agent.errors import EXIT_RESTART
from agent.events.record import normalise
from agent.events.thumbs import LabelledBox
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.update.updater import AgentUpdater
from agent.uplink.spool import Outgoing, Priority

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from agent.app import Agent, Running
    from agent.config.schema import Config
    from agent.health.stage import HealthStage
    from agent.rules import SnapshotRequest
    from agent.services import Host

log = logging.getLogger(__name__)

REPLY_STREAM = "cmd_result"
RESTART_GRACE_S = 3.0  # time given to the restart reply to reach the broker before exiting


@dataclass
class Job:
    command: str
    payload: bytes
    received_mono: float = field(default_factory=time.monotonic)


@dataclass
class RuleSnapshot:
    request: SnapshotRequest
    objects: list[LabelledBox]


class ControlStage:
    name = "control"

    def __init__(
        self,
        host: Host,
        running: Running,
        health: HealthStage,
        publisher: Any,
        *,
        config_file: Path | None = None,
        origins: Mapping[tuple[str, ...], str] | None = None,
    ) -> None:
        """`host` is the running config (read live, swapped whole by config/set) and the restart;
        `config_file` and `origins` say where each setting came from (live changes persist beside
        the file, and `config/get` names the origin)."""
        self.host = host
        self.running = running
        self.health = health
        self.publisher = publisher
        self.origins = dict(origins or {})
        cfg = host.config.control
        self.queue: queue.Queue[Job | RuleSnapshot] = queue.Queue(maxsize=cfg.queue)
        self.store = ConfigStore(config_file, running.state_dir)
        self.live = LiveConfig(
            config=lambda: host.config,
            swap=host.use_config,
            origins=self.origins,
            pipeline=running.pipeline,
            services=running.services,
            store=self.store,
            audit=lambda: health.privacy.audit,
        )
        self.models = ModelUpdater(host, running, health.tap, self.store, lambda: health.privacy.audit)
        self.releases = AgentUpdater(lambda: host.config.update, lambda: health.privacy.audit, self.exit_for_restart)
        self.snapshots = Snapshotter(lambda: host.config, health, running.factory, running.pipeline.emitter)
        folder = running.state_dir / "control"
        folder.mkdir(parents=True, exist_ok=True)
        self.gate = CommandGate(host.config, running.clock, running.spool, running.spool.uptime, folder)
        self.counts = {"received": 0, "ok": 0, "error": 0, "busy": 0, "oversized": 0, "rule_snapshots": 0}
        self._counts_lock = threading.Lock()  # bumped from the uplink, control and analysis threads
        self._loop = BackgroundLoop("control", self._run)
        self._stop = self._loop.stopping

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> ControlStage:
        self._loop.start()
        live = sorted(".".join(k) for k, o in self.origins.items() if o.startswith("overlay "))
        if live:
            log.info("live changes kept in %s are in effect: %s", self.store.overlay, ", ".join(live))
        if self.publisher is not None:
            self.publisher.subscribe("cmd/#", self.on_message)
        return self

    def request_stop(self) -> None:
        self._loop.request_stop()

    def stop(self, deadline: float | None = None) -> None:
        deadline = resolve_deadline(deadline)
        self._loop.request_stop()
        self.models.stop(deadline)
        self.releases.stop(deadline)
        self._loop.join(deadline)

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1

    # -- intake (uplink thread: never block) ----------------------------------------------------------
    def on_message(self, suffix: str, payload: bytes) -> None:
        command = suffix.removeprefix("cmd/")
        self._count("received")
        limit = self.host.config.control.max_payload_bytes
        if len(payload) > limit:
            self._count("oversized")
            message = f"payload of {len(payload)} bytes refused (control.max_payload_bytes = {limit})"
            self._send(None, command, False, message)
            return
        try:
            self.queue.put_nowait(Job(command, payload))
        except queue.Full:
            self._count("busy")
            message = f"busy: {self.queue.qsize()} commands are waiting; retry later"
            self._send(salvage_id(payload), command, False, message)

    def on_rule_snapshot(self, request: SnapshotRequest) -> None:
        """RuleEngine.on_snapshot (analysis thread): serve it on the control thread."""
        h, w = request.frame.image.shape[:2]
        objects: list[LabelledBox] = []
        for track in self.running.pipeline.tracker.tracks:
            x1, y1, x2, y2 = normalise(track.box, w, h)
            objects.append((track.label, (x1, y1, x2, y2)))
        try:
            self.queue.put_nowait(RuleSnapshot(request, objects))
        except queue.Full:
            log.warning("rule %s asked for a snapshot while the control queue is full; skipped", request.rule)

    # -- the control thread -----------------------------------------------------------------------------
    def _run(self, _loop: BackgroundLoop) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if isinstance(job, RuleSnapshot):
                    self._rule_snapshot(job)
                else:
                    self.handle(job)
            except Exception:  # the agent never crashes on a command
                log.exception("control: unexpected failure")

    def handle(self, job: Job) -> None:
        request_id: str | None = None
        try:
            envelope = parse_request(job.payload)
            request_id = envelope.id
            command = COMMANDS.get(job.command)
            if command is None:
                raise CommandError(f"unknown command {job.command!r} (known: {', '.join(COMMANDS)})")
            caller = self.gate.admit(envelope, job.command, command.role)
            if command.role != "viewer" and self.health.privacy.audit.full:
                raise CommandError(
                    "refused: the audit log holds as many entries the back office has not seen as it may "
                    "(privacy.audit.keep × 4 files); changes wait until the node's telemetry reaches the broker"
                )
            try:
                args = command.args.model_validate(envelope.args)
            except ValidationError as exc:
                raise CommandError(f"bad args: {describe_validation(exc, 'args.')}") from None
            actor = f"mqtt:cmd/{job.command} id={envelope.id} by {caller.describe()}"
            ctx = Context(
                envelope.id,
                job.command,
                actor,
                self._replier(envelope.id, job.command),
                self._progress(envelope.id, job.command),
                caller,
            )
            result = command.run(self, ctx, args)
        except CommandError as exc:
            self._send(request_id if request_id is not None else salvage_id(job.payload), job.command, False,
                       str(exc), exc.data or None)
            return
        except Exception as exc:
            log.exception("command %s failed", job.command)
            self._send(request_id, job.command, False, f"internal error ({type(exc).__name__}: {exc})")
            return
        if result is not None:
            message, data = result
            self._send(request_id, job.command, True, message, data)

    def _replier(self, request_id: str, command: str) -> ReplyFn:
        def send(ok: bool, message: str, data: dict[str, Any] | None) -> None:
            self._send(request_id, command, ok, message, data)

        return send

    def _progress(self, request_id: str, command: str) -> ProgressFn:
        def send(message: str, data: dict[str, Any]) -> None:
            self._send(request_id, command, True, message, data, progress=True)

        return send

    def _send(
        self,
        request_id: str | None,
        command: str,
        ok: bool,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        progress: bool = False,
    ) -> bool:
        if not progress:
            self._count("ok" if ok else "error")
        if not ok:
            log.warning("cmd/%s %s: %s", command, request_id, message)
        body = reply(request_id, command, ok, message, data, node=self.host.config.node.id, progress=progress)
        # bytes, not a dict: the spool would otherwise replace `id` with its own record id
        record = Outgoing(REPLY_STREAM, Priority.CRITICAL, REPLY_STREAM, body, sequenced=False)
        accepted = self.running.spool.accept([record])
        if not accepted:
            log.error("cmd/%s %s: the reply could not be queued", command, request_id)
        return accepted

    def _rule_snapshot(self, job: RuleSnapshot) -> None:
        self._count("rule_snapshots")
        request = job.request
        if self.health.privacy.audit.full:
            log.warning("snapshot for rule %s not sent: the audit log waits for the back office", request.rule)
            return
        try:
            self.snapshots.take(
                actor=f"rule:{request.rule}",
                reason=f"rule {request.rule}: {request.event_type}" + (f" in {request.zone}" if request.zone else ""),
                frame=request.frame,
                objects=job.objects,
                audit_request=False,  # the rules engine recorded the request
            )
        except CommandError as exc:
            log.warning("snapshot for rule %s not sent: %s", request.rule, exc)

    # -- restart --------------------------------------------------------------------------------------
    def request_restart(self, ctx: Context, reason: str) -> None:
        ctx.reply(True, f"restarting ({reason}): the agent exits with code {EXIT_RESTART}; systemd starts it again",
                  {"exit_code": EXIT_RESTART})
        self.exit_for_restart(ctx.actor, reason)

    def exit_for_restart(self, actor: str, reason: str) -> None:
        """Stop cleanly with EXIT_RESTART once queued replies had a chance to leave (restart, agent/update)."""
        self.running.spool.flush(RESTART_GRACE_S)
        self.running.spool.wait_drained(RESTART_GRACE_S)  # the reply reaches the broker, unless the link is down
        log.warning("restart requested by %s (%s); exiting with code %d", actor, reason, EXIT_RESTART)
        self.host.restart()

    def status(self) -> dict[str, Any]:
        return {
            "commands": dict(self.counts),
            "queued": self.queue.qsize(),
            "auth": self.gate.status(),
            "model_update": {"busy": self.models.busy, "last": self.models.last},
            "agent_update": {"busy": self.releases.busy, "last": self.releases.last},
            "snapshots": {"sent": self.snapshots.sent, "refused": self.snapshots.refused},
            "persist_to": str(self.store.target),
        }


def build(agent: Agent, running: Running) -> ControlStage | None:
    """Built when control is enabled: it listens for commands when there is a broker, and serves the
    snapshots rules ask for either way."""
    if not agent.config.control.enabled:
        return None
    health = running.services.health
    if health is None:
        return None
    stage = ControlStage(
        agent,
        running,
        health,
        running.services.publisher,
        config_file=agent.options.config_path,
        origins=agent.options.config_origins,
    )
    rules = running.services.rules
    if rules is not None and rules.engine.on_snapshot is None:
        rules.engine.on_snapshot = stage.on_rule_snapshot
    return stage


def disclose(config: Config) -> list[dict[str, Any]]:
    """For `agent privacy report`: replies to operators' commands."""
    if not config.uplink.broker or not config.control.enabled:
        return []
    prefix = f"{config.uplink.topic_prefix}/{config.node.id}"
    return [
        {
            "name": "command replies",
            "topic": f"{prefix}/cmd_result (requests arrive on {prefix}/cmd/{{name}})",
            "content": "one JSON reply per request an operator sends: request id, ok/error, a message and data. "
            "`status` returns the node's whole state (what the status page shows, including the modem's "
            "IMEI, the SIM's ICCID and the node's position); `config/get` the configuration with "
            "passwords, tokens and the SIM PIN shown as *** and the user:password part of every URL (camera "
            "streams, network serial ports) hidden; `snapshot` sends its one frame as described under snapshots. "
            "Every change and every snapshot is written to the audit log with who asked",
        }
    ]
