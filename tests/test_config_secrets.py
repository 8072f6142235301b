"""Credentials in URL-valued settings never leave the process (issue 13, item 4): `config/get` over a
real broker with a real agent reading a real (password-protected URL) camera stream, `status`,
`check-config --print` and its errors, modem and GNSS port labels, and the privacy report that
promises it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.agent_harness import AgentHarness, Operator
from tests.brokers import Mosquitto
from tests.conftest import CLIP, run_agent, shared
from tests.test_capture_stream import FakeCamera

pytestmark = pytest.mark.timeout(180)

SECRETS = ("secret", "hunter2", "s3cr3t-pin-pw", "rtsp-pass")


@pytest.fixture(scope="module")
def camera_stream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    clip = shared(CLIP)
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (./scripts/setup installs it)")
    out = tmp_path_factory.mktemp("ts") / "clip.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-t", "8", "-c", "copy", "-f", "mpegts", str(out)],
        check=True,
        timeout=120,
    )
    return out.read_bytes()


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_config_get_and_status_hide_the_camera_password(tmp_path: Path, camera_stream: bytes):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        with FakeCamera(camera_stream, ["full"]) as camera:
            assert "cam:secret@" in camera.url
            config = {"capture": {"source": camera.url, "realtime": True, "fps": 10.0}}
            with AgentHarness(tmp_path / "state", broker=broker.url, config=config, simulate=False) as node:
                operator = Operator(broker.url)
                try:
                    assert operator.wait_listening()
                    assert node.agent.config.capture.source == camera.url  # the agent itself uses it
                    everything = operator.request("config/get")
                    assert everything["status"] == "ok"
                    shown = everything["data"]["config"]["capture"]["source"]
                    assert shown == camera.url.replace("cam:secret@", "***@")
                    one = operator.request("config/get", {"keys": ["capture.source"]})["data"]["config"]
                    assert one == {"capture.source": shown}
                    status = operator.request("status")
                    for reply in (everything, one, status):
                        assert leaks(json.dumps(reply)) == [], reply
                    refused = operator.request("config/set", {"values": {"capture.fps": "fast"}})
                    assert refused["status"] == "error" and leaks(json.dumps(refused)) == []
                finally:
                    operator.close()
    finally:
        broker.stop()


CONFIG = """\
[node]
id = "pole-17"
[capture]
source = "rtsp://admin:rtsp-pass@10.0.0.20:554/stream1"
[uplink]
broker = "mqtts://broker.city.example:8883"
username = "pole-17"
password = "hunter2"
[modem]
mode = "managed"
port = "rfc2217://tech:secret@10.0.0.5:4001"
pin = "4321"
[gnss]
source = "port"
port = "rfc2217://tech:secret@10.0.0.5:4002"
"""


def test_check_config_print_and_errors_hide_userinfo(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text(CONFIG)
    res = run_agent("check-config", str(path), "--print", "--ignore-env", timeout=60)
    assert res.returncode == 0, res.stderr
    assert leaks(res.stdout + res.stderr) == [] and "4321" not in res.stdout
    assert 'source = "rtsp://***@10.0.0.20:554/stream1"' in res.stdout
    assert 'port = "rfc2217://***@10.0.0.5:4001"' in res.stdout
    # a table that fails validation is quoted whole in the error: its URLs and secrets are hidden too
    path.write_text(CONFIG.replace("mqtts://broker.city.example:8883", "http://user:s3cr3t-pin-pw@broker"))
    res = run_agent("check-config", str(path), timeout=60)
    assert res.returncode == 2 and "uplink" in res.stderr and "***" in res.stderr
    assert leaks(res.stdout + res.stderr) == [], res.stderr


def test_privacy_report_says_so_and_shows_none(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text(CONFIG)
    res = run_agent("privacy", "report", "--config", str(path), "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    assert leaks(res.stdout) == []
    report = json.loads(res.stdout)
    replies = next(c for c in report["outgoing"] if c["name"] == "command replies")
    assert "user:password part of every URL" in replies["content"]  # what test 1 shows to be true


def test_modem_and_gnss_ports_are_labelled_without_userinfo(tmp_path: Path):
    """Network serial ports (rfc2217://user:password@…) as the modem and GNSS stages show them in
    status and telemetry, while they fail to open (nothing listens there)."""
    url = "rfc2217://tech:secret@127.0.0.1:1"
    config = {
        "modem": {"mode": "managed", "port": url, "reopen_max_s": 0.4},
        "gnss": {"source": "port", "port": url.replace(":1", ":2"), "reopen_max_s": 0.4},
    }
    with AgentHarness(tmp_path / "state", config=config, simulate=False) as node:
        stage = node.stage("modem")
        assert stage.supervisor.wait_for(lambda s: s["state"] == "absent", 15) is not None
        assert stage.gnss.wait_state("absent", 15)
        status = stage.status()
        assert status["link"]["port"] == "rfc2217://***@127.0.0.1:1"
        assert status["gnss"]["port"] == "rfc2217://***@127.0.0.1:2"
        assert leaks(json.dumps(status)) == [], status
