"""`model/update` cannot be used to look around the node's network, to fill its disk, or to read the
digest of files on it (issue 13, items 5 and 6). A real agent, a real Mosquitto, real HTTP servers
(one that redirects, one that resets connections) and real listening sockets that record whether
the node ever connected to them."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tests.agent_harness import AgentHarness, Operator
from tests.brokers import free_port
from tests.fileserver import FileServer
from tests.test_control_model import CARD, variant

BIG = 3 * 1024 * 1024  # more than the updates folder's cap below


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Listener:
    """A TCP port that records connections: what `reset` closes with RST, else just accepts."""

    def __init__(self, *, reset: bool = False) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.reset = reset
        self.seen = threading.Event()
        threading.Thread(target=self._serve, name="listener", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.seen.set()
            if self.reset:
                conn.recv(1024)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Redirector:
    """An HTTP server that answers every GET with a redirect to `target` (or a status code)."""

    def __init__(self) -> None:
        self.target = ""
        self.status = 302
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if owner.status >= 400:
                    self.send_error(owner.status)
                    return
                self.send_response(owner.status)
                self.send_header("Location", owner.target)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/model.onnx"
        threading.Thread(target=self.server.serve_forever, name="redirector", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def node(module_broker, tmp_path_factory) -> Iterator[AgentHarness]:
    state = tmp_path_factory.mktemp("node") / "state"
    config = {"control": {"model_probation_frames": 5, "model_hosts": ["127.0.0.1"], "model_updates_max_mb": 2}}
    with AgentHarness(state, broker=module_broker.url, config=config) as harness:
        yield harness


@pytest.fixture(scope="module")
def operator(module_broker, node) -> Iterator[Operator]:
    op = Operator(module_broker.url)
    yield op
    op.close()


def update(operator: Operator, **args: object) -> dict:
    return operator.request("model/update", {"sha256": "0" * 64, "card": CARD, **args}, timeout=60)


def leftovers(node: AgentHarness) -> list[str]:
    folder = node.running.state_dir / "models" / "updates"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_failures_look_the_same_whatever_the_network_said(node, operator, files):
    """Refused, reset, HTTP errors and a wrong file all give the requester the same words: nothing to
    tell an open port from a closed one or a web server from a database."""
    closed = free_port()  # nothing listens there: connection refused
    resetter = Listener(reset=True)
    status = Redirector()
    files.files["other.onnx"] = os.urandom(2048)
    try:
        outcomes = {}
        outcomes["refused"] = update(operator, url=f"http://127.0.0.1:{closed}/m.onnx")
        outcomes["reset"] = update(operator, url=f"http://127.0.0.1:{resetter.port}/m.onnx")
        for code in (401, 404, 500):
            status.status = code
            outcomes[f"http {code}"] = update(operator, url=status.url)
        outcomes["wrong file"] = update(operator, url=files.url_for("other.onnx"))
        assert resetter.connections >= 1  # the node did try: the answers differ on the wire, not in the reply
        replies = {k: (r["status"], r["message"], r.get("data")) for k, r in outcomes.items()}
        assert all(r[0] == "error" for r in replies.values()), replies
        assert len(set(map(str, replies.values()))) == 1, replies
        message = replies["refused"][1]
        for word in ("refused", "reset", "404", "401", "500", "sha256", "Connection", str(closed)):
            assert word not in message, (word, message)
    finally:
        resetter.close()
        status.close()
    assert leftovers(node) == [], "a refused or wrong download left files behind"


def test_redirects_to_other_schemes_or_hosts_are_not_followed(node, operator):
    ftp = Listener()  # what urllib would connect to for ftp://127.0.0.1:PORT
    elsewhere = Listener()
    redirector = Redirector()
    try:
        redirector.target = f"ftp://127.0.0.1:{ftp.port}/model.onnx"
        assert update(operator, url=redirector.url)["status"] == "error"
        assert ftp.connections == 0  # the reply came after the node gave up: it never tried ftp://
        redirector.target = f"http://localhost:{elsewhere.port}/model.onnx"  # not in control.model_hosts
        assert update(operator, url=redirector.url)["status"] == "error"
        direct = update(operator, url=f"http://localhost:{elsewhere.port}/model.onnx")
        assert direct["status"] == "error" and "model_hosts" in direct["message"]  # refused before connecting
        # each request above has had its reply: had the node connected, the listeners would know by now
        assert ftp.connections == 0 and elsewhere.connections == 0
    finally:
        ftp.close()
        elsewhere.close()
        redirector.close()


def test_only_http_and_https(operator):
    reply = update(operator, url="ftp://127.0.0.1/model.onnx")
    assert reply["status"] == "error" and "http" in reply["message"]


def test_partial_and_too_large_downloads_do_not_stay(node, operator, files):
    cut = variant("cut")
    files.files["cut.onnx"] = cut
    files.cut_once["cut.onnx"] = None
    assert update(operator, url=files.url_for("cut.onnx"), sha256=sha(cut))["status"] == "error"
    assert any(name.endswith(".part") for name in leftovers(node))  # kept to resume the same request
    files.files["huge.onnx"] = big = os.urandom(BIG)
    reply = update(operator, url=files.url_for("huge.onnx"), sha256=sha(big))
    assert reply["status"] == "error"
    # the partial download of another request is gone, and nothing of the oversized one was kept
    assert leftovers(node) == [], leftovers(node)


def test_a_download_never_takes_the_spools_room(module_broker, files, tmp_path):
    """With the spool entitled to more than the disk has left, no byte of a download is written."""
    data = variant("no-room")
    files.files["no-room.onnx"] = data
    config = {"spool": {"budget_mb": 100_000_000}}  # the spool may grow past any free space
    with AgentHarness(tmp_path / "state", broker=module_broker.url, config=config) as harness:
        op = Operator(module_broker.url)
        try:
            reply = update(op, url=files.url_for("no-room.onnx"), sha256=sha(data))
        finally:
            op.close()
        assert reply["status"] == "error"
        assert leftovers(harness) == []
        assert harness.running.pipeline.detector.sha256 != sha(data)


# -- item 6: local files ------------------------------------------------------------------------------


def test_a_path_outside_the_import_folder_is_refused_and_its_digest_never_told(node, operator, tmp_path):
    secret = tmp_path / "node.key"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    digest = sha(secret.read_bytes())
    import_dir = node.running.state_dir / "models" / "import"
    import_dir.mkdir(parents=True, exist_ok=True)
    (import_dir / "link.onnx").symlink_to(secret)
    attempts = [str(secret), "../../../" + str(secret), "link.onnx", str(import_dir / ".." / "import" / "link.onnx")]
    for path in attempts:
        reply = update(operator, path=path)
        assert reply["status"] == "error" and "import folder" in reply["message"], (path, reply)
        assert digest not in str(reply), path
    (import_dir / "link.onnx").unlink()


def test_a_wrong_file_in_the_import_folder_is_refused_without_its_digest(node, operator):
    data = os.urandom(4096)
    import_dir = node.running.state_dir / "models" / "import"
    import_dir.mkdir(parents=True, exist_ok=True)
    (import_dir / "mistake.onnx").write_bytes(data)
    reply = update(operator, path="mistake.onnx")
    assert reply["status"] == "error" and "does not have the requested sha256" in reply["message"]
    assert sha(data) not in str(reply)
    assert leftovers(node) == []


def test_an_imported_model_still_updates(node, operator):
    data = variant("imported")
    (node.running.state_dir / "models" / "import" / "good.onnx").write_bytes(data)
    reply = operator.request("model/update", {"path": "good.onnx", "sha256": sha(data), "card": CARD}, timeout=90)
    assert reply["status"] == "ok", reply
    assert node.running.pipeline.detector.sha256 == sha(data)
