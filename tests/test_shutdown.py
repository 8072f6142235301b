"""SIGTERM on the worst day: a busy node stops within its 5 s budget and loses nothing.

Real parts: the `agent` command as a process analysing a real MPEG-TS stream (FFmpeg over HTTP, the
path an IP camera takes) with the real YOLOX-Nano detector; a real Mosquitto behind a link proxy; the
scripted LTE modem on a real pseudo-terminal. Then it all goes wrong: the modem stops answering (an AT
command hangs for its 5 s timeout), the broker dies and its host hangs (new TCP connections are neither
accepted nor refused: paho's connect() blocks for its 10 s timeout), and the camera stalls (FFmpeg
frozen with SIGSTOP: the connection stays open, no bytes, a read that OpenCV gives up on only after
its 5 s read timeout). Each alone outlasts the budget. SIGTERM must end the process within
`STOP_BUDGET_S` with exit code 0, and every event the node had accepted must be either delivered
(seen by a subscriber while the broker lived) or in the spool afterwards. On top, an operator's model
update and agent update are both downloading from a server that stalled (the control plane's jobs).

The spool commits in groups every 5 s here (the longest interval allowed), so an event accepted just
before SIGTERM is still waiting for its commit: only the final commit, in the slice of the budget
kept for it, keeps it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.events import EVENTS_STREAM
from agent.lifecycle import STOP_BUDGET_S
from agent.modem.emulator import ModemEmulator, PtyLink, Scenario
from agent.uplink.link import LinkProxy
from agent.uplink.spool import Spool
from fleet.wire import expand
from tests.agent_harness import Operator
from tests.brokers import Collector, Mosquitto, free_port
from tests.cameras import StreamCamera, transport_stream
from tests.conftest import CLIP, DEFAULT_MODEL, ROOT, YOLOX, agent_env, shared
from tests.fileserver import FileServer

NODE = "pole-9"
PIPELINE_EVENTS = {"object_appeared", "object_left"}
# The budget counts from the signal handler; after the last stage the interpreter still unwinds the
# main thread, runs atexit handlers and flushes the log: one second is ample for that on this machine.
INTERPRETER_EXIT_S = 1.0

pytestmark = pytest.mark.timeout(300)


class HungBroker:
    """A broker host that stopped accepting: it listens, but its accept queue is full, so the kernel
    drops new SYNs and a client's connect() hangs (paho gives up after its connect timeout, 10 s)."""

    def __init__(self, port: int) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(0)  # room for one unaccepted connection
        self.fillers = []
        for _ in range(2):  # the first fills the queue; the second's SYN is already dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self.fillers.append(filler)

    def close(self) -> None:
        for sock in [*self.fillers, self.server]:
            sock.close()


def status_page(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as response:
        return json.loads(response.read())


def wait_page(
    proc: subprocess.Popen[bytes], port: int, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    """Poll the status page until `predicate` holds (the page is the node's own report of its state)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | Exception | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            last = status_page(port)
            if predicate(last):
                return last
        except OSError as exc:  # the page is coming up
            last = exc
        time.sleep(0.25)  # polling an HTTP page, not synchronising threads
    raise AssertionError(f"timed out waiting for {what} (agent exit code {proc.poll()}); last page: {last!r}")


def event_ids(bodies: list[dict[str, Any]]) -> set[str]:
    return {b["id"] for b in bodies if b.get("type") in PIPELINE_EVENTS}


def spooled_events(state_dir: Path) -> list[dict[str, Any]]:
    """Every record left in the node's spool, read with the spool API after the agent exited."""
    spool = Spool(state_dir / "spool").start()
    try:
        records = spool.next_records(1_000_000)
    finally:
        spool.stop()
    return [expand(json.loads(r.payload), NODE) for r in records if r.stream == EVENTS_STREAM]


@pytest.mark.slow
def test_sigterm_on_a_busy_node_with_dead_broker_hung_modem_and_stalled_camera(tmp_path: Path) -> None:
    clip = transport_stream(shared(CLIP), tmp_path / "clip.ts", 30)
    model = shared(YOLOX)
    broker = Mosquitto(tmp_path / "broker").start()
    proxy = LinkProxy(("127.0.0.1", broker.port)).start()
    delivered = Collector(broker.url, [f"vigil/{NODE}/events"])  # straight to the broker, not via the proxy
    operator = Operator(broker.url, NODE)
    models = FileServer()
    models.files["next.onnx"] = DEFAULT_MODEL.read_bytes()
    models.files["release.tar"] = b"a release"
    models.gate.clear()  # the download server accepts downloads and then says nothing
    release_key = tmp_path / "release-key.pub"
    release_key.write_bytes(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    camera = StreamCamera(clip, tmp_path).start()
    modem = ModemEmulator(Scenario(boot_s=0.0, register_delay_s=0.0), name="shutdown")
    pty = PtyLink(modem, tmp_path / "vigil-at").start()
    http_port = free_port()
    state_dir = tmp_path / "state"
    config = tmp_path / "node.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "node": {"id": NODE, "state_dir": str(state_dir)},
                "capture": {"source": camera.url},
                "detect": {"model": str(model)},
                "uplink": {"broker": f"mqtt://127.0.0.1:{proxy.address[1]}", "reconnect_min_s": 0.2},
                "spool": {"commit_interval_ms": 5000},
                "telemetry": {"interval_s": 5},
                "http": {"listen": f"127.0.0.1:{http_port}"},
                "events": {"stdout": False},
                "modem": {"port": str(tmp_path / "vigil-at"), "poll_interval_s": 1.0},
                "gnss": {"source": "none"},
                "update": {"releases_dir": str(tmp_path / "releases"), "public_key": str(release_key)},
            }
        )
    )
    log_path = tmp_path / "agent.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--config", str(config)],
        cwd=ROOT,
        env=agent_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    frozen = False
    hung: HungBroker | None = None
    try:
        # Busy and healthy first: analysing the stream, events flowing to the broker, the modem online.
        wait_page(
            proc,
            http_port,
            lambda p: p["pipeline"]["events"] >= 1
            and p["stages"]["uplink"]["connected"]
            and p["stages"]["modem"]["link"]["up"],
            180,
            "a busy, connected node",
        )
        assert delivered.wait_for(lambda ms: len(ms) >= 1, 30), log_path.read_text()
        # An operator starts a model update and an agent update; both downloads hang on the stalled server.
        card = json.loads(DEFAULT_MODEL.with_suffix(".card.json").read_text())
        operator.publish("model/update", json.dumps({"id": "next-1", "args": {
            "url": models.url_for("next.onnx"), "sha256": card.pop("sha256"), "card": card}}).encode())
        operator.publish("agent/update", json.dumps({"id": "next-2", "args": {
            "url": models.url_for("release.tar"), "sha256": "0" * 64, "version": "99.0"}}).encode())
        wait_page(
            proc,
            http_port,
            lambda p: p["stages"]["control"]["model_update"]["busy"] and p["stages"]["control"]["agent_update"]["busy"],
            30,
            "a model download and a release download",
        )

        # Then everything goes wrong: the modem stops answering (a 5 s AT command timeout, longer than
        # the budget; we wait until one has expired so the supervisor is known to be stuck on it)…
        modem.hang()
        wait_page(
            proc,
            http_port,
            lambda p: p["stages"]["modem"]["link"]["counters"]["timeouts"] >= 1,
            60,
            "an AT command to time out",
        )
        # …the broker dies and its host hangs: connections reset, and a reconnect's connect() hangs…
        before = status_page(http_port)["pipeline"]["events"]
        proxy_port = proxy.address[1]
        proxy.stop()
        hung = HungBroker(proxy_port)
        broker.kill()
        # …the node keeps analysing: wait for an event accepted after that, which only the spool can
        # keep (the 5 s group commit makes it likely to be still waiting for its commit at SIGTERM)…
        wait_page(proc, http_port, lambda p: p["pipeline"]["events"] > before, 120, "an event after the broker died")
        # …and the camera stalls mid-stream with the connection open: the capture read blocks for
        # OpenCV's read timeout (5 s, longer than the budget). SIGTERM goes out while it is blocked.
        assert camera._proc is not None
        os.kill(camera._proc.pid, signal.SIGSTOP)
        frozen = True
        page = wait_page(
            proc,
            http_port,
            lambda p: p["capture"]["state"] == "streaming" and (p["capture"]["last_frame_age_s"] or 0) >= 1.0,
            30,
            "the capture read to block on the stalled stream",
        )
        accepted = page["pipeline"]["events"]  # events the pipeline handed to the spool so far

        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        rc = proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
    except BaseException:
        print(log_path.read_text())
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        if frozen and camera._proc is not None and camera._proc.poll() is None:
            os.kill(camera._proc.pid, signal.SIGCONT)
        camera.stop()
        models.close()
        operator.close()
        pty.stop()
        proxy.stop()
        if hung is not None:
            hung.close()
        delivered.close()
        broker.stop()
    text = log_path.read_text()
    assert rc == 0, text
    assert elapsed < STOP_BUDGET_S + INTERPRETER_EXIT_S, f"exit took {elapsed:.2f}s\n{text}"
    # the stall was real: the camera read was still blocked when its slice ended
    assert "thread capture did not stop by the shutdown deadline" in text, text

    # Nothing accepted was lost: each event reached the broker before it died or is in the spool.
    seen = event_ids([expand(json.loads(m.payload), NODE) for m in delivered.snapshot()])
    spooled = event_ids(spooled_events(state_dir))
    assert accepted >= 1 and len(seen | spooled) >= accepted, (accepted, len(seen), len(spooled), text)
    print(f"shutdown took {elapsed:.2f}s; {accepted} events accepted, {len(seen)} delivered, {len(spooled)} spooled")
