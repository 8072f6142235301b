"""A real agent running in-process on a thread (every stage, real spool, real broker when given), and an
operator's MQTT client that sends commands and waits for their replies. Used by the control,
telemetry, health and status-page tests."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from agent.app import Agent, Running, RunOptions
from agent.clock import Clock
from agent.config.loader import deep_merge, validate
from agent.uplink.spool import Record
from tests.brokers import Collector

NODE = "node-1"


def base_config(state_dir: Path, broker: str | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node": {"id": NODE, "state_dir": str(state_dir)},
        "capture": {"source": "synthetic:3", "fps": 20.0, "realtime": True},
        "spool": {"commit_interval_ms": 50},
        "events": {"stdout": False},
        "telemetry": {"interval_s": 60},
        "modem": {"mode": "off"},
        "gnss": {"source": "none"},
        # the tests send commands faster than an operator: the rate limit has its own test
        "control": {"rate_per_min": 6000, "rate_burst": 1000},
    }
    if broker:
        cfg["uplink"] = {"broker": broker, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "keepalive_s": 5}
    return cfg


class AgentHarness:
    """`with AgentHarness(...) as h:` starts the agent and waits until every stage runs."""

    def __init__(
        self,
        state_dir: Path,
        *,
        broker: str | None = None,
        config: dict[str, Any] | None = None,
        simulate: bool = True,
        trusted_clock: bool = False,
        config_path: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        data = deep_merge(base_config(state_dir, broker), config or {})
        if clock is None:
            clock = Clock(ntp_probe=lambda: True) if trusted_clock else Clock(ntp_probe=lambda: False)
        options = RunOptions(
            simulate=simulate, print_events=False, install_signal_handlers=False, config_path=config_path
        )
        self.agent = Agent(validate(data), options, clock=clock)
        self._started = threading.Event()
        self.agent.on_started(lambda _running: self._started.set())
        self.thread: threading.Thread | None = None
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.records: list[dict[str, Any]] = []  # every committed JSON record (events, telemetry, replies…)
        self.raw: list[Record] = []  # every committed record as the spool hands it out
        self._records_cond = threading.Condition()

    def __enter__(self) -> AgentHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> AgentHarness:
        self.thread = threading.Thread(target=self._run, name="test-agent", daemon=True)
        self.thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"agent did not start: {self.error!r}")
        self.running.spool.add_listener(self._collect)
        return self

    def _run(self) -> None:
        try:
            self.rc = self.agent.run()
        except BaseException as exc:
            self.error = exc
            self._started.set()

    def _collect(self, records: list) -> None:
        fresh = [
            {"stream": r.stream, **(r.body if r.body is not None else json.loads(r.payload))}
            for r in records
            if r.is_json
        ]
        with self._records_cond:
            self.raw.extend(records)
            self.records.extend(fresh)
            self._records_cond.notify_all()

    def wait_records(self, predicate, timeout: float) -> bool:
        with self._records_cond:
            return self._records_cond.wait_for(lambda: predicate(self.records), timeout)

    def stop(self, timeout: float = 15.0) -> None:
        self.agent.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "agent did not stop in time"

    @property
    def running(self) -> Running:
        assert self.agent.running is not None, f"agent not running: {self.error!r}"
        return self.agent.running

    def stage(self, name: str) -> Any:
        return self.running.services.get(name)


class Operator:
    """The back office: publishes commands, collects replies, events, thumbnails and telemetry."""

    def __init__(self, url: str, node: str = NODE, *, client_id: str | None = None) -> None:
        self.base = f"vigil/{node}"
        self.sub = Collector(url, [f"{self.base}/#"], client_id=client_id or f"operator-{uuid.uuid4().hex[:8]}")

    def close(self) -> None:
        self.sub.close()

    def replies(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.snapshot() if m.topic == f"{self.base}/cmd_result"]

    def publish(self, command: str, payload: bytes) -> None:
        info = self.sub.client.publish(f"{self.base}/cmd/{command}", payload, qos=1)
        info.wait_for_publish(10)

    def request(self, command: str, args: dict[str, Any] | None = None, *, timeout: float = 20.0,
                **envelope: Any) -> dict[str, Any]:
        """Send a well-formed request and return its reply (matched by id; "progress" replies are skipped)."""
        request_id = envelope.pop("id", None) or uuid.uuid4().hex[:16]
        body = {"id": request_id, **({"args": args} if args is not None else {}), **envelope}

        def final(messages: list) -> list[dict[str, Any]]:
            return [r for r in self._parsed(messages) if r.get("id") == request_id and r.get("status") != "progress"]

        before = len(final(self.sub.snapshot()))
        self.publish(command, json.dumps(body).encode())
        ok = self.sub.wait_for(lambda ms: len(final(ms)) > before, timeout)
        assert ok, f"no reply to {command} {request_id} within {timeout}s"
        return final(self.sub.snapshot())[-1]

    def raw(self, command: str, payload: bytes, *, timeout: float = 20.0) -> dict[str, Any]:
        """Send any payload and return the next reply to this command (for requests without a usable id)."""
        before = len(self.replies())

        def answered(ms) -> list[dict[str, Any]]:
            return [r for r in self._parsed(ms)[before:] if r.get("command") == command]

        self.publish(command, payload)
        assert self.sub.wait_for(lambda ms: bool(answered(ms)), timeout), f"no reply to {payload[:80]!r}"
        return answered(self.sub.snapshot())[0]

    def statuses(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.snapshot() if m.topic == f"{self.base}/status"]

    def wait_listening(self, after: int = 0, timeout: float = 30.0) -> bool:
        """Until a status message after the first `after` says the node takes commands (cmd/#)."""
        return self.sub.wait_for(
            lambda _ms: any(
                s.get("state") == "online" and "cmd/#" in s.get("listening", []) for s in self.statuses()[after:]
            ),
            timeout,
        )

    def _parsed(self, messages) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in messages if m.topic == f"{self.base}/cmd_result"]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.snapshot() if m.topic == f"{self.base}/events"]

    def messages(self, suffix: str) -> list:
        return [m for m in self.sub.snapshot() if m.topic.startswith(f"{self.base}/{suffix}")]
