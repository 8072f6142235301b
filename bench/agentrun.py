"""Run the real agent (`agent.app.Agent`, every stage) in-process against a local Mosquitto.

The agent talks to the broker through a byte-counting `LinkProxy` (an unlimited link), so what
"leaves the node" is measured on the wire, and a subscriber collects every message the broker
delivers (topic, payload, arrival time). A custom frame source (a camera replay) is passed in by
replacing `agent.app.choose_source` for the duration of the run: the only thing a benchmark changes.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import agent.app as app
from agent.app import Agent, Running, RunOptions
from agent.capture.base import FrameSource
from agent.config.schema import Config
from agent.uplink.link import LinkProxy, LinkState
from agent.uplink.spool import Record
from tests.brokers import Collector, Mosquitto, Received


def agent_config(
    state_dir: Path, broker_url: str, *, source: str = "synthetic", **sections: dict[str, Any]
) -> Config:
    """A node config for benchmarks: defaults, plus the given sections merged over them."""
    data: dict[str, Any] = {
        "node": {"id": "bench", "state_dir": str(state_dir)},
        "capture": {"source": source, "realtime": False},
        "uplink": {"broker": broker_url},
        "http": {"listen": "off"},
        "log": {"level": "warning"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Config.model_validate(data)


@dataclass
class AgentRun:
    """What one run of the agent produced."""

    running: Running
    messages: list[Received]
    wire_up: int  # bytes the agent sent to the broker (TCP payload: MQTT packets)
    wire_down: int  # bytes the broker sent to the agent (CONNACK, PUBACK, SUBACK...)
    committed: dict[int, float] = field(default_factory=dict)  # spool rowid -> when committed (monotonic)
    acked: dict[int, float] = field(default_factory=dict)  # spool rowid -> when its PUBACK arrived
    records: dict[int, Record] = field(default_factory=dict)  # spool rowid -> the committed record

    def by_topic(self, suffix: str) -> list[Received]:
        """Messages whose topic (after vigil/bench/) starts with `suffix`."""
        return [m for m in self.messages if m.topic.split("/", 2)[-1].startswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.by_topic("events")]


def mqtt_publish_bytes(topic: str, payload: bytes) -> int:
    """Size of a QoS 1 MQTT 3.1.1 PUBLISH packet: fixed header, topic, packet id, payload."""
    remaining = 2 + len(topic.encode()) + 2 + len(payload)
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    return 1 + length_bytes + remaining


@contextlib.contextmanager
def custom_source(make: Callable[[], FrameSource] | None) -> Iterator[None]:
    """Make the agent use `make()` as its frame source (None: the config's source)."""
    if make is None:
        yield
        return
    original = app.choose_source
    app.choose_source = lambda config, simulate: make()  # type: ignore[assignment]
    try:
        yield
    finally:
        app.choose_source = original


def run_agent(
    cfg: Config,
    broker: Mosquitto,
    *,
    source: Callable[[], FrameSource] | None = None,
    max_frames: int | None = None,
    drain_timeout_s: float = 120.0,
    on_started: Callable[[Running], None] | None = None,
    count_bytes: bool = True,
) -> AgentRun:
    """Start the agent, analyse the whole source, wait until the broker has acknowledged every
    record, stop. Returns what was published and when. `count_bytes` puts the counting proxy
    between agent and broker (off for latency: the proxy is a hop a real link does not have)."""
    proxy = LinkProxy(("127.0.0.1", broker.port)).start() if count_bytes else None
    if proxy is not None:
        proxy.set_state(LinkState("up"))
        url = f"mqtt://127.0.0.1:{proxy.address[1]}"
    else:
        url = broker.url
    cfg = cfg.model_copy(update={"uplink": cfg.uplink.model_copy(update={"broker": url})})  # config is frozen
    collector = Collector(
        broker.url, [f"{cfg.uplink.topic_prefix}/#"], client_id=f"bench-{time.monotonic_ns()}"
    )
    node = Agent(cfg, RunOptions(print_events=False, install_signal_handlers=False))
    result: AgentRun | None = None
    try:
        with custom_source(source):
            running = node.start()
        result = AgentRun(running, [], 0, 0)
        lock = threading.Lock()

        def committed(records: list[Record]) -> None:
            now = time.monotonic()
            with lock:
                for r in records:
                    result.committed[r.rowid] = now
                    result.records[r.rowid] = r

        running.spool.add_listener(committed)
        ack = running.spool.ack

        def timed_ack(rowids: Any) -> None:
            now = time.monotonic()
            rowids = list(rowids)
            with lock:
                for rowid in rowids:
                    result.acked.setdefault(rowid, now)
            ack(rowids)

        running.spool.ack = timed_ack  # type: ignore[method-assign]
        if on_started is not None:
            on_started(running)
        running.pipeline.run(running.capture, node.stop_event, max_frames=max_frames)
        running.spool.flush(30)
        if not running.spool.wait_drained(drain_timeout_s):
            raise RuntimeError("the spool did not drain: the broker did not acknowledge everything")
        sent = sum(1 for r in result.records.values() if r.stream in ("events", "thumbs"))
        collector.wait_for(
            lambda msgs: sum(1 for m in msgs if "/events" in m.topic or "/thumbs/" in m.topic) >= sent, 30
        )
    finally:
        node.stop()
        if proxy is not None:
            proxy.stop()
        collector.close()
    assert result is not None
    result.messages = collector.snapshot()
    if proxy is not None:
        result.wire_up, result.wire_down = proxy.bytes_up, proxy.bytes_down
    return result
