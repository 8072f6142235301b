"""The running agent: builds every stage from the config, starts them, stops them together.

Stages are lifecycle objects (agent.lifecycle.Stage). They are started in dependency order; on
SIGTERM they stop within one shared deadline (`STOP_BUDGET_S`): the capture first (no new frames),
then the analysis loop finishes its frame, then the consumers in reverse order of starting, and last
the spool commits what was accepted and the state-directory lock is released.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import models
from agent.capture import CaptureStage, FrameSource, SourceError, open_source, webcam_available
from agent.clock import Clock
from agent.config.schema import Config
from agent.detect import CardError, Detector
from agent.detect.detector import detector_from_config as detector_from_config  # re-exported
from agent.errors import EXIT_RESTART as EXIT_RESTART  # re-exported: older callers import it from here
from agent.errors import AgentError as AgentError
from agent.events import EVENTS_STREAM, EventEmitter, EventFactory, JsonLinesOutput, LocalThumbnails
from agent.events.local_thumbs import remove_legacy_folder
from agent.lifecycle import FINAL_SLICE_S, STOP_BUDGET_S, Stage, stop_all, stop_stage
from agent.motion import MotionGate
from agent.paths import state_dir_for as state_dir_for  # re-exported for older callers
from agent.pipeline import Pipeline
from agent.services import Services
from agent.statelock import StateDirBusy, StateDirLock
from agent.systemd import Notifier
from agent.track import Tracker
from agent.uplink.spool import Priority, Record, Spool, SpoolLimits, SpoolUnavailable

log = logging.getLogger(__name__)


def local_delivery(spool: Spool, output: JsonLinesOutput | None) -> Callable[[list[Record]], None]:
    """Without a broker: write events to the local output, then acknowledge what was delivered."""

    def deliver(records: list[Record]) -> None:
        written = True
        if output is not None:
            try:
                output(records)
            except OSError as exc:
                written = False
                log.error("cannot write events to the local output (%s); they stay in the spool", exc)
        spool.ack(r.rowid for r in records if written or r.stream != EVENTS_STREAM)

    return deliver




# Optional stages. Each module has `build(agent, running) -> stage | None` (None: not configured
# here); the agent starts them in this order once the core pipeline is built, and stops them right
# after the capture, in reverse order. A builder reads what it needs from the agent (the config, the
# run options) and hands the stage only a narrow part (agent.services.Host / ConfigHost, a getter).
STAGE_BUILDERS: tuple[str, ...] = (
    "agent.privacy.stage",  # first: masks and redaction must apply before anything else runs
    "agent.rules.stage",
    "agent.tamper",
    "agent.modem.stage",
    "agent.uplink.stage",
    "agent.health.stage",  # after uplink (retained status) and tamper; before control and web, which use it
    "agent.detect.thermal",  # slows the detector down while the CPU is hot (shown on the status page)
    "agent.control.stage",
    "agent.update.stage",  # confirms a new release on probation, reports a rollback (after uplink and health)
    "agent.web.stage",
)


@dataclass
class RunOptions:
    """Per-run choices that are not node configuration."""

    simulate: bool = False
    events_out: Path | None = None
    print_events: bool = True
    max_frames: int | None = None
    install_signal_handlers: bool = True
    config_path: Path | None = None  # the file the config came from (control plane: persist live changes)
    config_origins: dict[tuple[str, ...], str] = field(default_factory=dict)  # key -> file:line / env / flag


@dataclass
class Running:
    """What `Agent.start()` built; tests and the control plane reach stages through it."""

    spool: Spool
    capture: CaptureStage
    detector: Detector
    pipeline: Pipeline
    factory: EventFactory
    clock: Clock
    state_dir: Path
    stages: list[Stage] = field(default_factory=list)
    services: Services = field(default_factory=Services)  # the optional stages, by type
    thumbnails: LocalThumbnails | None = None  # the latest thumbnails, for the status page


def choose_source(config: Config, simulate: bool) -> FrameSource:
    spec = config.capture.source
    if spec == "auto":
        if webcam_available(0):
            log.info("source: webcam 0")
            spec = "webcam:0"
        else:
            log.info("no webcam found; using the built-in synthetic street scene (try --source to choose)")
            spec = "synthetic"
    try:
        return open_source(spec, config.capture)
    except SourceError as exc:
        raise AgentError(str(exc)) from None


def choose_model(config: Config, source: FrameSource, state_dir: Path) -> Path:
    spec = config.detect.model
    try:
        if spec != "auto":
            return models.resolve(spec, state_dir)
        if source.name != "synthetic":
            real = models.installed_path("yolox-nano", state_dir)
            if real is not None:
                return real
            log.warning(
                "the default model vigil-synth only knows the synthetic scene; for a real camera run "
                "`agent models fetch yolox-nano` (or pass --model)"
            )
        return models.resolve("vigil-synth", state_dir)
    except models.ModelError as exc:
        raise AgentError(str(exc)) from None


class Agent:
    def __init__(
        self, config: Config, options: RunOptions | None = None, *, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.options = options or RunOptions()
        self.clock = clock or Clock()
        self.stop_event = threading.Event()
        self.running: Running | None = None
        self.notifier = Notifier()
        self.exit_code = 0  # EXIT_RESTART after `restart()` (a command, an update, a failed probation)
        self._on_started: list[Callable[[Running], None]] = []
        self._stop_requested_at: float | None = None  # monotonic; the shutdown budget counts from here
        self._analysing = threading.Lock()  # held by the analysis loop; stop() waits for its last frame

    def use_config(self, config: Config) -> None:
        """Replace the running configuration (live changes): one assignment, never an edit in place, so
        a reader sees the old config or the new one whole. Stages that copy settings are told by the
        caller (agent.control.live)."""
        self.config = config

    # -- building ---------------------------------------------------------------------------------
    def _load_detector(self, path: Path) -> Detector:
        try:
            return detector_from_config(path, self.config.detect)
        except CardError as exc:
            raise AgentError(str(exc)) from None

    def _spool(self, state_dir: Path) -> Spool:
        sp = self.config.spool
        day = 86400.0
        limits = SpoolLimits(
            budget_bytes=int(sp.budget_mb * 1024 * 1024),
            free_floor_bytes=int(sp.free_floor_mb * 1024 * 1024),
            commit_interval_s=sp.commit_interval_ms / 1000.0,
            ttl_s={
                Priority.CRITICAL: sp.ttl_critical_days * day,
                Priority.EVENT: sp.ttl_event_days * day,
                Priority.THUMB: sp.ttl_thumb_days * day,
                Priority.TELEMETRY: sp.ttl_telemetry_days * day,
            },
        )
        # wall time as the clock knows it (GNSS-corrected when GNSS is what makes it trusted), so an NTP
        # step after a GNSS-only period does not make every queued record look ancient
        return Spool(
            state_dir / "spool",
            limits=limits,
            clock_trusted=lambda: self.clock.state().trusted,
            wall=lambda: self.clock.wall_at(time.monotonic()),
        )

    def start(self) -> Running:
        state_dir = state_dir_for(self.config)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentError(f"cannot create state directory {state_dir}: {exc}") from None
        try:
            lock = StateDirLock(state_dir).acquire()  # before anything reads or writes the state
        except StateDirBusy as exc:
            raise AgentError(str(exc)) from None
        except OSError as exc:
            raise AgentError(f"cannot lock state directory {state_dir}: {exc}") from None
        stages: list[Stage] = [lock]  # stopped last, so the lock outlives every writer
        try:
            return self._build(state_dir, stages)
        except BaseException:
            self._stop_stages(stages, time.monotonic() + STOP_BUDGET_S)
            raise

    def _build(self, state_dir: Path, stages: list[Stage]) -> Running:
        """Build and start the stages in order, appending each to `stages` as it starts."""
        cfg = self.config
        source = choose_source(cfg, self.options.simulate)
        detector = self._load_detector(choose_model(cfg, source, state_dir))
        log.info(
            "model %s (%s…) on %s", detector.card.name, detector.sha256[:12], getattr(source, "name", "?")
        )
        try:
            spool = self._spool(state_dir).start()
        except SpoolUnavailable as exc:
            raise AgentError(str(exc)) from None
        stages.append(spool)
        output = None
        if self.options.print_events or self.options.events_out:
            output = JsonLinesOutput(path=self.options.events_out)
            stages.append(output)
        remove_legacy_folder(state_dir / "thumbs")  # older agents kept them as files
        thumbnails = LocalThumbnails(
            max_files=cfg.privacy.local_thumbnails,
            ttl_s=cfg.spool.ttl_thumb_days * 86400.0,
            uptime=spool.uptime,
        ).start()  # in memory, for the status page; expires them past their TTL even when never sent
        stages.append(thumbnails)
        spool.add_listener(thumbnails)
        if not cfg.uplink.broker:
            # No broker: the local output is the delivery, so a record is acknowledged once written
            # there; an event that could not be written stays in the spool.
            spool.add_listener(local_delivery(spool, output))
        elif output is not None:
            spool.add_listener(output)
        factory = EventFactory(
            cfg.node.id, self.clock, lambda: self.running.detector.info() if self.running else {}
        )
        if spool.recovered_from is not None:
            # consumers will see seq jump (or restart); this event tells them why
            body = factory.base("spool_recovered", None, priority="critical")
            body["reason"] = f"spool was unreadable and was moved aside to {spool.recovered_from.name}"
            EventEmitter(spool, cfg.events.schema_revision).emit(body)
        pipeline = Pipeline(
            detector=detector,
            gate=MotionGate(cfg.motion),
            tracker=Tracker.from_config(cfg.track),
            factory=factory,
            emitter=EventEmitter(spool, cfg.events.schema_revision),
            events_cfg=cfg.events,
        )
        capture = CaptureStage(
            source,
            realtime=cfg.capture.realtime,
            reconnect_initial_s=cfg.capture.reconnect_initial_s,
            reconnect_max_s=cfg.capture.reconnect_max_s,
        )
        try:
            capture.start()
        except SourceError as exc:
            raise AgentError(str(exc)) from None
        stages.append(capture)
        self.running = Running(
            spool, capture, detector, pipeline, factory, self.clock, state_dir, stages, thumbnails=thumbnails
        )
        self._start_optional_stages(self.running)
        for hook in self._on_started:
            hook(self.running)
        return self.running

    def _start_optional_stages(self, running: Running) -> None:
        for module_name in STAGE_BUILDERS:
            stage = importlib.import_module(module_name).build(self, running)
            if stage is None:
                continue
            stage.start()
            running.stages.append(stage)
            running.services.add(stage)

    def on_started(self, hook: Callable[[Running], None]) -> None:
        self._on_started.append(hook)

    # -- running ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Start, analyse until the stream ends, --max-frames or a signal, then stop cleanly."""
        if self.options.install_signal_handlers:
            self._install_signals()
        running = self.start()
        self.notifier.ready(running.capture.status_line())
        try:
            with self._analysing:
                running.pipeline.run(
                    running.capture,
                    self.stop_event,
                    max_frames=self.options.max_frames,
                    heartbeat=self.notifier.ping,
                )
            self._drain_at_end(running)
        except SourceError as exc:
            raise AgentError(str(exc)) from None
        finally:
            self.notifier.stopping()
            self.stop()
        return self.exit_code

    def _drain_at_end(self, running: Running) -> None:
        """A finite source ended by itself: give the uplink a bounded chance to deliver what is spooled."""
        limit = self.config.uplink.drain_at_end_s
        if self.stop_event.is_set() or not limit or running.services.uplink is None:
            return
        self.notifier.send("STATUS=delivering the spool before exiting")
        deadline = time.monotonic() + limit
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.notifier.ping()  # alive: the uplink is working through the spool
            if running.spool.wait_drained(min(0.5, max(0.0, deadline - time.monotonic()))):
                log.info("spool drained; exiting")
                return
        left = running.spool.stats()["depth"]
        if left:
            log.warning("exiting with %d record(s) still spooled; they are sent on the next start", left)

    def request_stop(self) -> None:
        """Ask the running agent to stop; the shutdown budget counts from the first request."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self.stop_event.set()

    def restart(self) -> None:
        """agent.services.Host: stop cleanly and exit with EXIT_RESTART, so systemd starts us again."""
        self.exit_code = EXIT_RESTART
        self.request_stop()

    def stop(self) -> None:
        """Stop every stage within `STOP_BUDGET_S` of the stop request (see the module docstring)."""
        self.request_stop()
        assert self._stop_requested_at is not None
        if self.running is not None:
            started = time.monotonic()
            self._stop_stages(
                self.running.stages,
                self._stop_requested_at + STOP_BUDGET_S,
                producer=self.running.capture,
                analysing=self._analysing,
            )
            log.info("stopped in %.2fs", time.monotonic() - started)

    @staticmethod
    def _stop_stages(
        stages: list[Stage],
        deadline: float,
        *,
        producer: Stage | None = None,
        analysing: threading.Lock | None = None,
    ) -> None:
        """Stop `stages` (in start order) by one shared `deadline`.

        The producer (capture) goes first and the analysis loop is given until the others' deadline to
        finish its frame; then the stages started after the producer (consumers) in reverse order, by
        `deadline - FINAL_SLICE_S`; then those started before it (the local outputs, the spool, the
        state-directory lock), which keep the final slice so the spool's last commit always has time.
        """
        consumers_by = deadline - FINAL_SLICE_S
        split = stages.index(producer) if producer in stages else len(stages)
        if producer is not None and split < len(stages):
            # a blocked camera read cannot be interrupted: it gets one slice, not the consumers' time
            stop_stage(producer, min(consumers_by, time.monotonic() + FINAL_SLICE_S))
        if analysing is not None:
            if analysing.acquire(timeout=max(0.0, consumers_by - time.monotonic())):
                analysing.release()
            else:
                log.warning("the analysis loop did not finish its frame by the shutdown deadline")
        stop_all(list(reversed(stages[split + 1 :])), consumers_by)
        # never less than one slice: what was accepted is committed even after a late stop request
        final_by = max(deadline, time.monotonic() + FINAL_SLICE_S)
        for stage in reversed(stages[:split]):
            stop_stage(stage, final_by)
        stages.clear()

    def _install_signals(self) -> None:
        def handle(signum: int, _frame: object) -> None:
            if self.stop_event.is_set():
                raise KeyboardInterrupt  # second Ctrl-C: give up waiting
            log.info("received %s, stopping", signal.Signals(signum).name)
            self.request_stop()

        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGTERM, handle)
