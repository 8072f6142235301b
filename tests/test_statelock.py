"""One agent per state directory: a second one (a technician starting `agent` by hand beside the
service) is refused with a clear message and changes nothing; the lock dies with its holder."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading

from tests.conftest import ROOT, agent_env, read_events, run_agent


def start_running_agent(state_dir) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    """A real agent on the synthetic street in real time; returns once it has built its stages."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--simulate", "--source", "synthetic:2", "--state-dir", str(state_dir),
         "--http", "off", "--events-out", str(state_dir.parent / "first.jsonl")],
        cwd=ROOT, env=agent_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    while True:
        line = lines.get(timeout=60)
        if " model " in line:  # logged once the state directory is locked and the model loaded
            return proc, lines


def test_a_second_agent_on_the_same_state_directory_is_refused(state_dir):
    first, _ = start_running_agent(state_dir)
    try:
        second = run_agent("--simulate", "--source", "synthetic:3", "--max-frames", "30", "--no-realtime",
                           "--state-dir", str(state_dir), "--http", "off")  # fmt: skip
        assert second.returncode == 1
        assert f"in use by another agent (pid {first.pid}" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert read_events(second.stdout) == []  # it produced and spooled nothing
        assert first.poll() is None, "the running agent must not be disturbed"
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0
    # once the first has stopped, the directory is free again
    again = run_agent("--simulate", "--source", "synthetic:3", "--max-frames", "30", "--no-realtime",
                      "--state-dir", str(state_dir), "--http", "off")  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_the_lock_dies_with_a_killed_agent(state_dir):
    first, _ = start_running_agent(state_dir)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    after = run_agent("--simulate", "--source", "synthetic:3", "--max-frames", "30", "--no-realtime",
                      "--state-dir", str(state_dir), "--http", "off")  # fmt: skip
    assert after.returncode == 0, after.stderr
