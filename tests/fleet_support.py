"""Shared parts of the back-office tests: event records shaped like the nodes', a real JPEG, a QoS 1
publisher that waits for each PUBACK, the ingest as a subprocess, and databases (SQLite files and
throwaway PostgreSQL servers). Import the fixtures a test module uses from here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.postgres import PostgresServer, need_psycopg

ROOT = Path(__file__).resolve().parents[1]

TS = "2026-05-01T10:00:00.000Z"


def agent_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's VIGIL_* settings (as tests.conftest.agent_env)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def event(
    node: str,
    seq: int,
    *,
    event_id: str | None = None,
    thumb: bytes | None = None,
    compact: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """An event as a node publishes it (schema/event-v1.json); `compact` leaves out every optional field
    and default, as an additive schema revision may."""
    body: dict[str, Any] = {
        "schema": "vigil.event/1",
        "id": event_id or str(uuid.uuid4()),
        "node": node,
        "seq": seq,
        "type": "object_appeared",
        "ts": TS,
    }
    if not compact:
        body.update(
            {
                "priority": "normal",
                "label": "person",
                "score": 0.9,
                "bbox": [0.1, 0.1, 0.2, 0.3],
                "track": seq,
                "clock": {"source": "ntp", "trusted": True, "boot": "b", "mono": 1.0},
                "model": {"name": "vigil-synth", "sha256": "0" * 64},
                "thumb": None,
                "location": None,
            }
        )
    if thumb is not None:
        body["thumb"] = {"sha256": hashlib.sha256(thumb).hexdigest(), "bytes": len(thumb), "size": [32, 24]}
    body.update(extra)
    return body


def jpeg(seed: int = 0) -> bytes:
    import cv2
    import numpy as np

    image = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# -- databases ------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test process (each test gets its own database)."""
    need_psycopg()
    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against SQLite and against PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    server: PostgresServer = request.getfixturevalue("pg_server")
    return server.create_database()


# -- MQTT -------------------------------------------------------------------------------------------------
class Publisher:
    """A node-like MQTT client: QoS 1 publishes, each one waited for until its PUBACK."""

    def __init__(self, url: str, client_id: str, *, tls: Any = None, v5: bool = False) -> None:
        host, port = url.split("://")[1].rsplit(":", 1)
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._connected.wait(15):
            raise TimeoutError(f"publisher {client_id} could not connect to {url}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, properties: Any = None) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(15)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the ingest as a process ----------------------------------------------------------------------------
def fleet_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env or agent_env(),
    )


def start_ingest(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m fleet ingest ARGS` in the background, its output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "fleet", "ingest", *args],
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env=env or agent_env(),
        )


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `condition` (state in another process: a database, a broker) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)  # another process changes what we poll; there is nothing to wait on here


def kill9(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, 9)
    proc.wait(30)


# -- real agents of a provisioned fleet ------------------------------------------------------------------
class Agents:
    """Real `agent` processes, one per node of a provisioned fleet (its bundle: certificate, config),
    each with a state directory that survives kill -9 and restarts, printing every accepted event."""

    def __init__(self, fleet: Path, root: Path) -> None:
        self.fleet = fleet
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def state(self, node: str) -> Path:
        return self.root / node

    def start(self, node: str, seed: int, broker: str | None = None, extra: tuple[str, ...] = ()) -> None:
        bundle = self.fleet / "nodes" / node
        env = agent_env(
            VIGIL_UPLINK__TLS__CA_FILE=str(bundle / "ca.crt"),
            VIGIL_UPLINK__TLS__CERT_FILE=str(bundle / "node.crt"),
            VIGIL_UPLINK__TLS__KEY_FILE=str(bundle / "node.key"),
            VIGIL_PRIVACY__AUDIT__KEY_FILE=str(bundle / "audit.key"),
            VIGIL_UPLINK__RECONNECT_MAX_S="2",
            VIGIL_EVENTS__STDOUT="true",  # every accepted event as a JSON line: what the node sent
        )
        if broker:
            env["VIGIL_UPLINK__BROKER"] = broker
        state = self.state(node)
        state.mkdir(parents=True, exist_ok=True)
        with (state / "events.jsonl").open("ab") as out, (state / "agent.log").open("ab") as err:
            argv = [
                sys.executable,
                "-m",
                "agent",
                "--config",
                str(bundle / "config.toml"),
                "--source",
                f"synthetic:{seed}",
                "--no-realtime",
                "--state-dir",
                str(state),
                "--http",
                "off",
                *extra,
            ]
            # --no-realtime agents take all the CPU they get: at a lower priority they do not starve the
            # tests running beside them on a shared machine (they only produce events more slowly)
            self.procs[node] = subprocess.Popen(
                argv, stdout=out, stderr=err, cwd=ROOT, env=env, preexec_fn=lambda: os.nice(10)
            )

    def kill(self, node: str) -> None:
        kill9(self.procs[node])

    def stop(self, node: str) -> None:
        proc = self.procs[node]
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)

    def printed(self, node: str) -> list[dict[str, Any]]:
        path = self.state(node) / "events.jsonl"
        out = []
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # the last line of an agent killed while printing it
        return out

    def published(self) -> int:
        return sum(len(self.printed(n)) for n in self.procs)

    def drain(self, node: str, broker: str) -> int:
        """Run the stopped node's agent once more on a short, finite stream: at its end the agent
        delivers what its spool holds by itself (uplink.drain_at_end_s) and exits. Returns the last
        event seq the node ever accepted (`agent spool stats`)."""
        log = self.state(node) / "agent.log"
        before = log.stat().st_size if log.exists() else 0
        self.start(node, seed=99, broker=broker, extra=("--max-frames", "10"))
        assert self.procs[node].wait(180) == 0, f"{node}: the last run failed (see {log})"
        with log.open("rb") as fh:
            fh.seek(before)
            last_run = fh.read().decode(errors="replace")
        assert "spool drained" in last_run, f"{node}: the agent did not deliver its spool: {last_run[-1500:]}"
        stats = subprocess.run(
            [sys.executable, "-m", "agent", "spool", "stats", "--state-dir", str(self.state(node)), "--json"],
            capture_output=True, text=True, cwd=ROOT, env=agent_env(), check=True,
        )  # fmt: skip
        return int(json.loads(stats.stdout)["seq"].get("events", 0))

    def close(self) -> None:
        for proc in self.procs.values():
            kill9(proc)


def check_stored_exactly(db_url: str, agents: Agents, accepted: dict[str, int]) -> dict[str, Any]:
    """The database holds every seq each node accepted exactly once, with the ids it printed, and every
    announced thumbnail; returns a few figures for the test's report."""
    from fleet.store import reader
    from fleet.store.db import Database

    db = Database.open(db_url, create=False)
    try:
        report = reader.gaps_report(db)["nodes"]
        assert report == {n: {"received": a, "max_seq": a, "missing": []} for n, a in accepted.items()}, (
            report
        )
        rows = db.all("SELECT node, seq, id FROM events")
        assert len(rows) == sum(accepted.values())  # each seq exactly once
        stored_ids = {(node, int(seq)): event_id for node, seq, event_id in rows}
        for node, count in accepted.items():
            assert sorted(s for n, s in stored_ids if n == node) == list(range(1, count + 1))
            for body in agents.printed(node):
                assert stored_ids[(node, body["seq"])] == body["id"]
        assert db.scalar("SELECT COUNT(*) FROM quarantine") == 0
        thumbs = db.scalar("SELECT COUNT(*) FROM thumbs WHERE state = 'ok'")
        announced = db.scalar("SELECT COUNT(*) FROM events WHERE thumb_sha256 IS NOT NULL")
        assert thumbs == announced, (thumbs, announced)  # every announced thumbnail arrived and matched
        return {"thumbs": thumbs, "duplicates": db.scalar("SELECT SUM(duplicates) FROM nodes")}
    finally:
        db.close()


def events_received(db_url: str) -> dict[str, int]:
    from fleet.store import reader
    from fleet.store.db import Database

    try:
        db = Database.open(db_url, create=False)
    except Exception:
        return {}
    try:
        return {n: v["received"] for n, v in reader.gaps_report(db)["nodes"].items()}
    finally:
        db.close()
