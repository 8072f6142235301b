"""The status page's HTTP surface on a real agent: page, /status.json, /metrics, the preview (long-poll
JPEG and MJPEG), thumbnails, the token, and the `--http` flag of the real command."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ConfigError, validate
from tests.agent_harness import AgentHarness
from tests.conftest import run_agent

TOKEN = "correct-horse-battery-staple"
MASK = {"name": "window", "polygon": [[0.6, 0.0], [1.0, 0.0], [1.0, 0.5], [0.6, 0.5]]}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 15.0) -> tuple[int, dict, bytes]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    state = tmp_path_factory.mktemp("web") / "state"
    with AgentHarness(state, config={"privacy": {"masks": [MASK]}}) as harness:
        assert harness.wait_records(lambda _rs: harness.running.pipeline.stats.frames > 5, 20)  # analysing
        yield harness


@pytest.fixture(scope="module")
def url(node):
    return node.stage("web").url


def test_nothing_is_encoded_while_nobody_watches(node):
    assert node.wait_records(lambda _rs: node.running.pipeline.stats.frames > 20, 20)
    assert node.stage("web").preview.encoded == 0


def test_page_and_assets(url):
    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="preview"' in body and b"/app.js" in body and b"viewport" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    for asset, kind in (("app.js", "javascript"), ("app.css", "css")):
        status, headers, body = get(url + asset)
        assert status == 200 and kind in headers["Content-Type"] and len(body) > 500


def test_status_json_has_what_the_page_shows(url, node):
    assert node.wait_records(lambda rs: any(r.get("type") == "object_appeared" for r in rs), 30)
    status, _, body = get(url + "status.json")
    data = json.loads(body)
    assert status == 200 and data["node"] == "node-1" and data["camera"]["ok"] is True
    assert data["recent_events"] and data["recent_events"][0]["type"]
    assert {"capture", "pipeline", "system", "spool", "stages", "versions", "clock"} <= set(data)


def test_metrics_are_prometheus_text(url):
    status, headers, body = get(url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["vigil_agent_info"].samples[0].labels["node"] == "node-1"
    assert families["vigil_analysed_frames"].samples[0].value > 0
    assert {s.labels["class"] for s in families["vigil_spool_records"].samples} == {
        "critical", "event", "thumb", "telemetry"}
    assert families["vigil_camera_ok"].samples[0].value == 1
    assert "python_gc_objects_collected" not in families  # our own registry, not the process-global one


def test_preview_long_poll_gives_newer_masked_frames(url, node):
    status, headers, first = get(url + "preview.jpg?after=0")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and first[:2] == b"\xff\xd8"
    seq = int(headers["X-Frame-Seq"])
    status, headers, _ = get(url + f"preview.jpg?after={seq}")
    assert status == 200 and int(headers["X-Frame-Seq"]) > seq
    image = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    h, w = image.shape[:2]
    assert w == 640
    inside = image[int(0.1 * h) : int(0.45 * h), int(0.65 * w) : int(0.97 * w)]
    assert inside.max() <= 24, "the privacy mask is blacked out in the preview"
    assert node.stage("web").preview.encoded >= 2


def test_mjpeg_stream_delivers_successive_frames(url):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        conn.request("GET", "/preview.mjpeg")
        res = conn.getresponse()
        assert res.status == 200 and res.getheader("Content-Type").startswith("multipart/x-mixed-replace")
        data = b""
        while data.count(b"--vigilframe") < 3:
            chunk = res.read1(65536)
            assert chunk, "stream ended"
            data += chunk
        assert data.count(b"\xff\xd8") >= 2
    finally:
        conn.close()


def test_thumbnails_are_served_and_paths_are_not(url, node):
    events = json.loads(get(url + "status.json")[2])["recent_events"]
    with_thumb = [e for e in events if e["thumb"]]
    assert with_thumb, events
    status, _, body = get(url + f"thumbs/{with_thumb[0]['id']}.jpg")
    assert status == 200 and body[:2] == b"\xff\xd8"
    for bad in ("thumbs/../spool.db.jpg", "thumbs/..%2Fspool.db.jpg", "thumbs/index.jsonl", "etc/passwd"):
        assert get(url + bad)[0] == 404


def test_the_page_is_read_only(url):
    request = urllib.request.Request(url + "status.json", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 405


def test_exposed_page_needs_the_token_everywhere(tmp_path):
    config = {"http": {"listen": "0.0.0.0:0", "token": TOKEN}}
    with AgentHarness(tmp_path / "state", config=config, simulate=False) as node:
        port = node.stage("web").address[1]
        base = f"http://127.0.0.1:{port}/"
        for path in ("", "status.json", "metrics", "preview.jpg", "preview.mjpeg", "app.js", "thumbs/x.jpg"):
            status, _, body = get(base + path)
            assert status == 401, path
        assert b"Token required" in get(base)[2]
        assert get(base + "status.json", {"Authorization": "Bearer wrong-token-0000000"})[0] == 401
        assert get(base + "status.json", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert get(base + "metrics", {"X-Vigil-Token": TOKEN})[0] == 200
        status, headers, _ = get(base + f"?token={TOKEN}")  # the link a technician opens once
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        status, _, body = get(base, {"Cookie": cookie})
        assert status == 200 and b'id="preview"' in body
        assert get(base + "preview.jpg", {"Cookie": cookie})[0] == 200
        metrics = get(base + "metrics", {"Cookie": cookie})[2].decode()
        assert "vigil_http_unauthorized_total 9.0" in metrics


def test_binding_beyond_loopback_without_a_token_is_refused():
    with pytest.raises(ConfigError, match=r"http\.token"):
        validate({"http": {"listen": "0.0.0.0:8080"}})
    with pytest.raises(ConfigError, match="at least 16"):
        validate({"http": {"listen": "0.0.0.0:8080", "token": "short"}})
    with pytest.raises(ConfigError, match="ADDR"):
        validate({"http": {"listen": "localhost:http"}})
    assert validate({"http": {"listen": "8080"}}).http.listen == "8080"
    assert validate({"http": {"listen": "[::1]:8080"}}).http.listen == "[::1]:8080"


def test_too_many_clients_get_503(tmp_path):
    with AgentHarness(tmp_path / "state", config={"http": {"max_clients": 1}}) as node:
        host, port = node.stage("web").address
        stream = socket.create_connection((host, port), timeout=10)
        try:
            stream.sendall(b"GET /preview.mjpeg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert stream.recv(64).startswith(b"HTTP/1.1 200")
            assert get(f"http://{host}:{port}/status.json")[0] == 503
        finally:
            stream.close()


def test_simulate_prints_the_page_url_once(state_dir):
    res = run_agent("--simulate", "--source", "synthetic:1", "--max-frames", "60", "--no-realtime",
                    "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if "status page:" in line]
    assert len(lines) == 1 and "http://127.0.0.1:" in lines[0]
    quiet = run_agent("--simulate", "--source", "synthetic:1", "--max-frames", "20", "--no-realtime",
                      "--state-dir", str(state_dir), "--http", "off")
    assert quiet.returncode == 0 and "status page:" not in quiet.stderr
    exposed = run_agent("--simulate", "--max-frames", "5", "--state-dir", str(state_dir), "--http", "0.0.0.0:0")
    assert exposed.returncode == 2 and "http.listen" in exposed.stderr and "token" in exposed.stderr
