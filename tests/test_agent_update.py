"""Over-the-air agent updates end to end: real releases (built and signed by `vigil-provision`'s builder,
each slot with its own venv from its wheelhouse), the node's real launcher restarted like systemd's
Restart=always, a real Mosquitto and an operator on MQTT.

The node starts on release 1.0.0 (installed as first boot does), then is sent: a tampered 1.1.0
(refused, nothing changes), the real 1.1.0 over a link that breaks mid-download (resumed; confirmed
on probation), 1.2.0 that crashes at every start (rolled back after its starts) and 1.3.0 that runs
but never reaches the broker (rolled back after its probation time). Each rollback is reported by the
release it went back to as a critical `agent_update_failed` event."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from agent.app import EXIT_RESTART
from agent.privacy.audit import AuditLog
from agent.update import slots
from agent.update.release import Trusted, extract, open_release
from tests.agent_harness import Operator
from tests.brokers import Mosquitto
from tests.conftest import agent_env
from tests.fileserver import FileServer
from tests.releases import Releases, tampered
from tests.supervisor import RestartLoop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

PROBATION_S = 30
SYSTEM_PYTHON = "/usr/bin/python3"


def node_config(folder: Path, broker: Mosquitto, releases: Releases) -> Path:
    config = folder / "config.toml"
    config.write_text(f"""
[node]
id = "node-1"
state_dir = "{folder / "state"}"
[capture]
source = "synthetic:3"
fps = 10.0
[events]
stdout = false
[spool]
commit_interval_ms = 50
[uplink]
broker = "{broker.url}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
keepalive_s = 5
[modem]
mode = "off"
[gnss]
source = "none"
[http]
listen = "off"
[update]
releases_dir = "{folder / "opt" / "releases"}"
public_key = "{releases.public_key}"
python = "{SYSTEM_PYTHON}"
probation_timeout_s = {PROBATION_S}
probation_frames = 20
""")
    return config


def first_boot(layout: slots.Layout, built, key: Path) -> None:
    """What /opt/vigil/firstboot does with the release an offline install staged."""
    extract(open_release(built.path, Trusted.load(key)), layout.slot(built.version))
    slots.install_staged(layout, built.version, SYSTEM_PYTHON)


def launcher(opt: Path) -> Path:
    (opt / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(slots.__file__, opt / "lib" / "vigil_slots.py")
    launch = opt / "launch"
    launch.write_text(slots.launcher_script(str(opt / "lib")))
    launch.chmod(0o755)
    return launch


def running_version(operator: Operator, timeout: float) -> str | None:
    """Ping until the node answers (a freshly started node subscribes first); the version it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request_id = uuid.uuid4().hex[:12]
        operator.publish("ping", json.dumps({"id": request_id}).encode())
        if operator.sub.wait_for(
            lambda _ms, rid=request_id: any(r["id"] == rid for r in operator.replies()), 1.0
        ):
            return next(r for r in operator.replies() if r["id"] == request_id)["data"]["agent"]
    return None


def update(operator: Operator, args: dict, timeout: float = 300) -> tuple[dict, list[dict]]:
    """Send agent/update; its final reply and the progress replies before it."""
    request_id = uuid.uuid4().hex[:12]
    operator.publish("agent/update", json.dumps({"id": request_id, "args": args, "actor": "ops"}).encode())

    def final(messages) -> bool:
        return any(r["id"] == request_id and r["status"] != "progress" for r in operator._parsed(messages))

    assert operator.sub.wait_for(final, timeout), f"no reply to agent/update {args}"
    mine = [r for r in operator.replies() if r["id"] == request_id]
    return mine[-1], [r for r in mine if r["status"] == "progress"]


def events(operator: Operator, kind: str) -> list[dict]:
    return [e for e in operator.events() if e["type"] == kind]


def test_upgrade_and_rollbacks_through_real_restarts(tmp_path, broker):
    releases = Releases(tmp_path / "releases")
    base, good = releases.build("1.0.0"), releases.build("1.1.0")
    crashing, unreachable = (
        releases.build("1.2.0", defect="crash"),
        releases.build("1.3.0", defect="no-broker"),
    )
    opt = tmp_path / "node" / "opt"
    layout = slots.Layout(opt / "releases")
    first_boot(layout, base, releases.public_key)
    config = node_config(tmp_path / "node", broker, releases)
    audit = AuditLog(tmp_path / "node" / "state" / "audit")
    operator = Operator(broker.url)
    files = FileServer(good.path.parent)
    loop = RestartLoop([str(launcher(opt)), "--config", str(config)], env=agent_env(), logs=tmp_path / "runs")
    try:
        with loop:
            assert running_version(operator, 60) == "1.0.0"

            # A release altered after signing: refused before anything is installed; the node keeps running.
            bad, bad_sha = tampered(good, tmp_path / "tampered.tar")
            reply, _ = update(operator, {"path": str(bad), "sha256": bad_sha, "version": "1.1.0"})
            assert reply["status"] == "error" and "does not match the signed manifest" in reply["message"], (
                reply
            )
            assert slots.current(layout) == "1.0.0" and not layout.slot("1.1.0").exists()
            assert len(loop.runs) == 1 and loop.exits() == [None]
            assert any(e["action"] == "agent.update_refused" for e in audit.entries())

            # The real 1.1.0, over a link that dies a third of the way in: resumed, installed, restarted into.
            files.cut_once[good.path.name] = good.path.stat().st_size // 3
            reply, progress = update(
                operator, {"url": files.url_for(good.path.name), "sha256": good.sha256, "version": "1.1.0"}
            )
            assert reply["status"] == "ok" and "on probation" in reply["message"], reply
            download = [
                p for p in progress if p["data"].get("stage") == "download" and "percent" in p["data"]
            ]
            assert download and download[-1]["data"]["percent"] == 100
            assert any("attempt 2" in p["message"] for p in progress)  # the cut, retried
            assert [r for _, r in files.requests if r][-1].startswith("bytes=")  # … from where it stopped
            assert loop.wait_for(lambda runs: len(runs) >= 2, 60) and loop.exits()[0] == EXIT_RESTART
            assert operator.sub.wait_for(lambda _ms: events(operator, "agent_updated"), 120)
            (updated,) = events(operator, "agent_updated")
            assert updated["from_version"] == "1.0.0" and updated["to_version"] == "1.1.0"
            assert running_version(operator, 30) == "1.1.0"
            assert "probation" not in slots.load_state(layout) and slots.load_state(layout)["good"] == "1.1.0"
            assert slots.complete_versions(layout) == ["1.0.0", "1.1.0"]

            # 1.2.0 crashes at every start: two starts, then the launcher goes back to 1.1.0, which reports it.
            runs_before = len(loop.runs)
            reply, _ = update(
                operator, {"path": str(crashing.path), "sha256": crashing.sha256, "version": "1.2.0"}
            )
            assert reply["status"] == "ok", reply
            assert operator.sub.wait_for(lambda _ms: events(operator, "agent_update_failed"), 180), (
                loop.exits()
            )
            (failed,) = events(operator, "agent_update_failed")
            assert failed["priority"] == "critical" and failed["from_version"] == "1.2.0"
            assert failed["to_version"] == "1.1.0" and "stopped 2 time(s)" in failed["reason"]
            assert loop.exits()[runs_before - 1 : runs_before + 2] == [EXIT_RESTART, 1, 1]
            assert "it crashes at start" in loop.runs[runs_before].output()
            assert running_version(operator, 30) == "1.1.0" and slots.current(layout) == "1.1.0"
            assert slots.complete_versions(layout) == ["1.1.0", "1.2.0"]  # two slots: 1.0.0 made room

            # 1.3.0 starts and analyses but never reaches the broker: rolled back after its probation time.
            reply, _ = update(
                operator, {"path": str(unreachable.path), "sha256": unreachable.sha256, "version": "1.3.0"}
            )
            assert reply["status"] == "ok", reply
            assert operator.sub.wait_for(
                lambda _ms: len(events(operator, "agent_update_failed")) == 2, PROBATION_S + 180
            ), loop.exits()
            second = events(operator, "agent_update_failed")[-1]
            assert second["from_version"] == "1.3.0" and second["to_version"] == "1.1.0"
            assert f"did not connect to the broker within {PROBATION_S} s" in second["reason"], second
            assert running_version(operator, 30) == "1.1.0" and slots.current(layout) == "1.1.0"
            assert set(slots.load_state(layout)["failed"]) == {"1.2.0", "1.3.0"}

        audit = AuditLog(audit.folder)  # read again: the node made its audit key after the first look
        actions = [e["action"] for e in audit.entries()]
        assert actions.count("agent.update_installed") == 3 and actions.count("agent.update_rolled_back") == 2
        assert actions.count("agent.update_confirmed") == 1 and audit.verify() == []
    finally:
        loop.stop()
        files.close()
        operator.close()
