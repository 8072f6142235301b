"""The service's launcher (agent/update/slots.py, copied to /opt/vigil as on a node) as a real process:
what it starts, how it counts the starts of a release on probation, when it rolls back, and its guard.

The releases here are stand-ins (an `agent` script per slot that records its start and then crashes,
hangs or exits) so each rule is shown in seconds; tests/test_agent_update.py runs real releases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.update import slots

STUB = """#!{python}
import json, os, signal, sys, time
from pathlib import Path
slot = Path(__file__).resolve().parents[2]
record = {{"version": slot.name, "pid": os.getpid(), "argv": sys.argv[1:],
          "releases": os.environ.get("VIGIL_UPDATE__RELEASES_DIR")}}
with open(os.environ["STUB_LOG"], "a") as fh:
    fh.write(json.dumps(record) + "\\n")
mode = (slot / "mode").read_text().strip()
if mode == "crash":
    sys.exit(3)
if mode == "hang":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()
"""


def make_slot(layout: slots.Layout, version: str, mode: str, *, complete: bool = True) -> Path:
    slot = layout.slot(version)
    agent = slot / "venv" / "bin" / "agent"
    agent.parent.mkdir(parents=True)
    agent.write_text(STUB.format(python=sys.executable))
    agent.chmod(0o755)
    (slot / "mode").write_text(mode)
    if complete:
        slots.mark_complete(slot, {"version": version})
    return slot


@pytest.fixture
def node(tmp_path: Path):
    """An /opt/vigil as install.py lays it out: lib/vigil_slots.py, the launch script, releases/."""
    opt = tmp_path / "opt"
    (opt / "lib").mkdir(parents=True)
    shutil.copyfile(slots.__file__, opt / "lib" / "vigil_slots.py")
    launch = opt / "launch"
    launch.write_text(slots.launcher_script(str(opt / "lib")).replace("/usr/bin/python3", sys.executable, 1))
    launch.chmod(0o755)
    layout = slots.Layout(opt / "releases")
    layout.releases.mkdir()
    return launch, layout, tmp_path / "starts.log"


def launch_once(launch: Path, layout: slots.Layout, log: Path, *args: str, timeout: float = 30) -> int:
    env = {**os.environ, "STUB_LOG": str(log), slots.RELEASES_ENV: str(layout.releases)}
    return subprocess.run([str(launch), *args], env=env, timeout=timeout, capture_output=True).returncode


def starts(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def begin_probation(layout: slots.Layout, version: str, previous: str, **extra) -> None:
    with slots.locked_state(layout) as state:
        state["good"] = previous
        state["probation"] = {"version": version, "from": previous, "timeout_s": 600, "frames": 10, "max_starts": 2,
                              "starts": 0, **extra}
    slots.switch(layout, version)


def test_starts_the_current_release_with_its_arguments(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    slots.switch(layout, "1.0.0")
    assert launch_once(launch, layout, log, "--config", "/etc/vigil/config.toml") == 0
    (record,) = starts(log)
    assert record["version"] == "1.0.0" and record["argv"] == ["--config", "/etc/vigil/config.toml"]
    assert record["releases"] == str(layout.releases)  # the agent sees the same release area


def test_a_release_that_crashes_at_start_is_rolled_back_after_its_starts(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    make_slot(layout, "1.1.0", "crash")
    begin_probation(layout, "1.1.0", "1.0.0")
    codes = [launch_once(launch, layout, log) for _ in range(3)]  # what Restart=always does
    assert codes == [3, 3, 0]
    assert [s["version"] for s in starts(log)] == ["1.1.0", "1.1.0", "1.0.0"]
    state = slots.load_state(layout)
    assert slots.current(layout) == "1.0.0" and "probation" not in state
    assert state["rollback"]["from"] == "1.1.0" and state["rollback"]["to"] == "1.0.0"
    assert "stopped 2 time(s) before it confirmed" in state["rollback"]["reason"]
    assert state["rollback"]["reported"] is False and "1.1.0" in state["failed"]
    assert launch_once(launch, layout, log) == 0 and starts(log)[-1]["version"] == "1.0.0"  # and stays there


def test_a_release_that_recorded_its_own_failure_is_rolled_back_at_once(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    make_slot(layout, "1.1.0", "exit")
    begin_probation(layout, "1.1.0", "1.0.0", starts=1, failure="release 1.1.0 did not connect to the broker")
    assert launch_once(launch, layout, log) == 0
    assert [s["version"] for s in starts(log)] == ["1.0.0"]
    assert slots.load_state(layout)["rollback"]["reason"] == "release 1.1.0 did not connect to the broker"


def test_a_release_past_its_deadline_is_rolled_back(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    make_slot(layout, "1.1.0", "exit")
    begin_probation(layout, "1.1.0", "1.0.0", starts=1, boot=slots.boot_id(), deadline_mono=time.monotonic() - 1,
                    progress={"connected": False, "frames": 412})
    assert launch_once(launch, layout, log) == 0
    reason = slots.load_state(layout)["rollback"]["reason"]
    assert "not confirmed within 600 s" in reason and "connected to the broker: no, frames analysed: 412" in reason
    assert starts(log)[-1]["version"] == "1.0.0"


def test_a_half_written_slot_is_never_started(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    make_slot(layout, "1.1.0", "exit", complete=False)  # power cut while its venv was being built
    with slots.locked_state(layout) as state:
        state["good"] = "1.0.0"
    with pytest.raises(slots.SlotError, match="not completely installed"):
        slots.switch(layout, "1.1.0")
    layout.current_link.symlink_to("1.1.0")  # as if a broken tool had pointed `current` at it anyway
    assert launch_once(launch, layout, log) == 0
    assert [s["version"] for s in starts(log)] == ["1.0.0"] and slots.current(layout) == "1.0.0"


def test_the_guard_stops_a_release_that_never_confirms(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    make_slot(layout, "1.1.0", "hang")
    begin_probation(layout, "1.1.0", "1.0.0", timeout_s=1, grace_s=1)
    env = {**os.environ, "STUB_LOG": str(log), slots.RELEASES_ENV: str(layout.releases)}
    proc = subprocess.Popen([str(launch)], env=env)
    try:
        assert proc.wait(timeout=30) == 0  # SIGTERM from the guard; the stand-in exits cleanly on it
    finally:
        if proc.poll() is None:
            proc.kill()
    failure = slots.load_state(layout)["probation"]["failure"]
    assert "was not confirmed within 1 s and did not stop by itself" in failure
    assert launch_once(launch, layout, log) == 0 and starts(log)[-1]["version"] == "1.0.0"


def test_without_any_release_the_launcher_says_what_is_missing(node):
    launch, layout, log = node
    env = {**os.environ, "STUB_LOG": str(log), slots.RELEASES_ENV: str(layout.releases)}
    res = subprocess.run([str(launch)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "no agent to start" in res.stderr and "firstboot" in res.stderr


def test_prune_keeps_the_two_slots(tmp_path):
    layout = slots.Layout(tmp_path / "releases")
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        make_slot(layout, version, "exit")
    slots.switch(layout, "1.2.0")
    assert slots.prune(layout, keep={"1.1.0"}) == ["1.0.0"]
    assert slots.complete_versions(layout) == ["1.1.0", "1.2.0"]


def test_the_node_side_modules_need_nothing_but_the_standard_library():
    """slots.py runs as the launcher and first boot with the system python3, before any venv exists;
    install.py runs on a fresh Raspberry Pi OS."""
    import ast

    from tests.conftest import ROOT

    for path in (ROOT / "agent/update/slots.py", ROOT / "provisioning/install.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert names - {"__future__"} <= set(sys.stdlib_module_names), (path.name, names - set(sys.stdlib_module_names))


def test_a_lost_current_link_falls_back_to_the_last_good_release(node):
    launch, layout, log = node
    make_slot(layout, "1.0.0", "exit")
    with slots.locked_state(layout) as state:
        state["good"] = "1.0.0"
    assert launch_once(launch, layout, log) == 0
    assert [s["version"] for s in starts(log)] == ["1.0.0"] and slots.current(layout) == "1.0.0"
