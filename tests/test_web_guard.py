"""The status page under abuse (issue 13, items 3 and 10), on a real agent's real server with real
sockets: slow clients trickling their headers cannot lock it (total head deadline, a cap per client
address, authenticated clients still served), the Host header is checked (DNS rebinding, shown with
a real Chromium), and wrong tokens are throttled.

Clients come from different loopback addresses (127.0.0.x: Linux routes all of 127/8 to lo), so
per-address caps can be exercised on one machine.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_harness import AgentHarness
from tests.test_web_browser import WebDriver, chromium

pytestmark = pytest.mark.timeout(120)

TOKEN = "pole-17-technician-token"
EXPOSED = {"http": {"listen": "0.0.0.0:0", "token": TOKEN}}


def request(
    port: int, path: str = "/status.json", *, source: str = "127.0.0.2", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET from a given source address (a fresh connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        res = conn.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        conn.close()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class SlowClient:
    """Sends a request line, then one header line every `pace` seconds, forever: it never finishes
    its head. Records whether (and that) the server closed the connection on it."""

    def __init__(self, port: int, source: str, pace: float = 0.5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.pace = pace
        self.started = threading.Event()
        self.closed_by_server = threading.Event()
        self.refused = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="slow-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sock.sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            self.sock.settimeout(self.pace)  # waiting for the server is also our pacing
            self.started.set()
            while not self._stop.is_set():
                try:
                    data = self.sock.recv(256)
                except TimeoutError:
                    self.sock.sendall(b"X-Slow: one-more-line\r\n")
                    continue
                if not data or b"503" in data:
                    self.refused = bool(data)
                    self.closed_by_server.set()
                    return
        except OSError:
            self.closed_by_server.set()
        finally:
            self.started.set()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def slow_clients() -> Iterator[list[SlowClient]]:
    made: list[SlowClient] = []
    yield made
    for client in made:
        client.stop()


def test_slow_clients_cannot_lock_the_page(tmp_path: Path, slow_clients):
    config = {"http": {**EXPOSED["http"], "max_clients": 4}}
    with AgentHarness(tmp_path / "state", config=config, simulate=False) as node:
        port = node.stage("web").address[1]
        # six addresses, two trickling connections each: three times the slots there are
        for n in range(6):
            for _ in range(2):
                slow_clients.append(SlowClient(port, f"127.0.0.{10 + n}"))
        for client in slow_clients:
            assert client.started.wait(10)
        # the technician's phone, meanwhile: served every time
        for _ in range(5):
            status, _, body = request(port, headers=bearer())
            assert status == 200, body
            assert json.loads(body)["node"] == "node-1"
        # and every slow client is closed by the server although it never stopped sending
        for client in slow_clients:
            assert client.closed_by_server.wait(30), "a slow client kept its connection"
        web = node.stage("web").status()
        assert web["cut_slow"] + web["evicted"] >= len(slow_clients) - 1, web
        assert web["connections"]["serving"] == 0


def test_one_address_gets_a_bounded_share(tmp_path: Path, slow_clients):
    config = {"http": {**EXPOSED["http"], "max_clients_per_address": 2, "head_timeout_s": 30}}
    with AgentHarness(tmp_path / "state", config=config, simulate=False) as node:
        port = node.stage("web").address[1]
        hogs = [SlowClient(port, "127.0.0.20") for _ in range(2)]
        slow_clients.extend(hogs)
        for hog in hogs:
            assert hog.started.wait(10)
        third = SlowClient(port, "127.0.0.20")
        slow_clients.append(third)
        assert third.closed_by_server.wait(10) and third.refused  # 503 at once
        assert not any(h.closed_by_server.is_set() for h in hogs)
        assert request(port, source="127.0.0.21", headers=bearer())[0] == 200  # other addresses are fine
        assert node.stage("web").status()["refused_per_address"] >= 1


def test_the_host_header_must_name_this_node(tmp_path: Path):
    config = {"http": {"listen": "127.0.0.1:0", "allowed_hosts": ["pole-17.city.example"]}}
    with AgentHarness(tmp_path / "state", config=config) as node:
        port = node.stage("web").address[1]
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            f"pole-17.city.example:{port}",
            socket.gethostname(),
        ):
            assert request(port, source="127.0.0.1", headers={"Host": host})[0] == 200, host
        for host in (f"rebind.attacker.example:{port}", "127.0.0.1.attacker.example", "localhost.evil"):
            status, _, body = request(port, source="127.0.0.1", headers={"Host": host})
            assert status == 421 and b"status" not in body, host
        assert node.stage("web").status()["wrong_host"] == 3


@pytest.fixture
def rebinding_browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Chromium resolving rebind.example to this machine: what a rebinding attack achieves."""
    rules = ("--host-resolver-rules=MAP rebind.example 127.0.0.1",)
    with chromium(tmp_path, lambda port, profile: WebDriver(port, profile, rules)) as driver:
        yield driver


def test_a_rebinding_page_cannot_read_the_status(tmp_path: Path, rebinding_browser):
    with AgentHarness(tmp_path / "state", config={"http": {"listen": "127.0.0.1:0"}}) as node:
        port = node.stage("web").address[1]
        rebinding_browser.get(f"http://rebind.example:{port}/")
        text = rebinding_browser.js("return document.body.innerText")
        assert "not known by that name" in text
        status = rebinding_browser.js(
            "return fetch('/status.json').then(r => r.text().then(t => [r.status, t]))"
        )
        assert status[0] == 421 and "node-1" not in status[1]
        rebinding_browser.get(f"http://127.0.0.1:{port}/")  # the real address still works
        rebinding_browser.wait("return document.getElementById('node').textContent === 'node-1'")


def test_wrong_tokens_are_throttled_per_address(tmp_path: Path):
    with AgentHarness(tmp_path / "state", config=EXPOSED, simulate=False) as node:
        port = node.stage("web").address[1]
        assert request(port, source="127.0.0.30")[0] == 401  # no token at all: not a guess
        for n in range(5):
            assert request(port, source="127.0.0.30", headers=bearer(f"guess-number-{n:08d}"))[0] == 401
        status, headers, _ = request(port, source="127.0.0.30", headers=bearer("guess-number-99999999"))
        assert status == 429 and int(headers["Retry-After"]) >= 1
        # the right token from the throttled address is not even looked at (else guessing goes on)
        assert request(port, source="127.0.0.30", headers=bearer())[0] == 429
        assert request(port, source="127.0.0.30", path=f"/?token={TOKEN}")[0] == 429
        # the technician elsewhere is not affected
        assert request(port, source="127.0.0.31", headers=bearer())[0] == 200
        assert node.stage("web").status()["throttled"] >= 3
