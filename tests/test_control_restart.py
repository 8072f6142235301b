"""`restart` on the real `agent` process: the reply reaches the operator, the process exits cleanly with
EXIT_RESTART (systemd's Restart=always starts it again), and live changes survive the restart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

from agent.app import EXIT_RESTART
from tests.agent_harness import Operator
from tests.brokers import Mosquitto
from tests.conftest import ROOT, agent_env


def start_agent(broker: Mosquitto, state_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "--simulate", "--source", "synthetic:2", "--broker", broker.url,
         "--state-dir", str(state_dir), "--node-id", "node-1", "--http", "off"],
        cwd=ROOT, env=agent_env(VIGIL_MODEM__MODE="off"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )


def listening(operator: Operator, timeout: float = 30.0) -> bool:
    """Ping until the (re)started node answers: commands sent before it subscribed are not queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request_id = uuid.uuid4().hex[:12]
        operator.publish("ping", json.dumps({"id": request_id}).encode())
        if operator.sub.wait_for(lambda _ms, rid=request_id: any(r["id"] == rid for r in operator.replies()), 1.0):
            return True
    return False


def test_restart_exits_for_systemd_and_live_changes_survive(broker, tmp_path):
    state = tmp_path / "state"
    operator = Operator(broker.url)
    proc = start_agent(broker, state)
    try:
        assert listening(operator)
        assert operator.request("config/set", {"values": {"detect.score_threshold": 0.61}})["status"] == "ok"
        reply = operator.request("restart", {"reason": "test"}, actor="ops")
        assert reply["status"] == "ok" and reply["data"]["exit_code"] == EXIT_RESTART
        assert proc.wait(timeout=20) == EXIT_RESTART
        assert "exiting with code 75" in proc.stderr.read()
        proc = start_agent(broker, state)  # what systemd does
        assert listening(operator)
        config = operator.request("config/get", {"keys": ["detect.score_threshold"]})["data"]["config"]
        assert config == {"detect.score_threshold": 0.61}
        again = operator.request("restart", id=reply["id"])  # a replayed restart is not obeyed twice
        assert again["status"] == "error" and "duplicate" in again["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        operator.close()
