"""systemd integration on a real notification socket: READY=1 once the agent runs, WATCHDOG=1 while the
analysis loop turns, and no watchdog ping while it is stuck (so systemd's WatchdogSec restarts a hung node).

The test is systemd: it binds the AF_UNIX datagram socket named by $NOTIFY_SOCKET, sets WATCHDOG_USEC
and reads what the agent sends (agent/systemd.py speaks the sd_notify protocol without libsystemd).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture.base import Frame
from tests.agent_harness import AgentHarness
from tests.conftest import ROOT, agent_env

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4s: the agent pings every 0.2 s (half of it)


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket that collects what the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> str | None:
        """The next datagram, or None when nothing arrives within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def until(self, wanted: str, timeout: float) -> list[str]:
        """Every datagram up to and including the first that contains `wanted`."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is None:
                break
            got.append(message)
            if wanted in message.splitlines():
                return got
        raise AssertionError(f"no {wanted!r} within {timeout}s; received {got[-5:]}")

    def drain(self) -> list[str]:
        got = []
        while (message := self.receive(0.0001)) is not None:
            got.append(message)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def lines(messages: list[str]) -> list[str]:
    return [line for message in messages for line in message.splitlines()]


def test_ready_watchdog_and_stopping_reach_the_notify_socket(notify, tmp_path):
    """The real `agent` process as systemd starts it (Type=notify, WatchdogSec): READY=1 once it
    analyses, WATCHDOG=1 at half the interval while it runs, STOPPING=1 on its way out."""
    env = agent_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--simulate", "--source", "synthetic:1", "--max-frames", "40",
         "--http", "off", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        before_ready = lines(notify.until("READY=1", 60))
        running = lines(notify.until("STOPPING=1", 60))
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert "WATCHDOG=1" not in before_ready  # nothing claims liveness before the agent is up
    assert any(line.startswith("STATUS=analysing") for line in before_ready)
    # 40 frames at 10 fps take ~4 s: at a ping every 0.2 s, well over a handful
    assert running.count("WATCHDOG=1") >= 5, running


def test_a_watchdog_from_another_process_is_not_ours(notify, tmp_path):
    """WATCHDOG_PID names the process systemd watches; a child that inherited the variables must not ping."""
    env = agent_env(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="1")
    res = subprocess.run(
        [sys.executable, "-m", "agent", "--simulate", "--source", "synthetic:1", "--max-frames", "20",
         "--no-realtime", "--http", "off", "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = lines(notify.drain())
    assert "READY=1" in got and "STOPPING=1" in got
    assert "WATCHDOG=1" not in got


def test_no_watchdog_ping_while_the_analysis_loop_is_stuck(notify, tmp_path, monkeypatch):
    """The analysis loop blocks on the pipeline lock (what a hung detector or a model swap that never
    returns does): the pings stop, so systemd would kill and restart the agent; they resume when the
    loop runs again. The capture thread and everything else keep running meanwhile."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    interval = WATCHDOG_USEC / 1e6 / 2
    with AgentHarness(tmp_path / "state") as harness:
        pipeline = harness.running.pipeline
        at_frame = threading.Event()

        def entering(frame: Frame) -> Frame:  # runs on the analysis loop before it takes the lock
            at_frame.set()
            return frame

        pipeline.filters.append(entering)
        notify.until("READY=1", 30)
        assert lines(notify.until("WATCHDOG=1", 10)).count("WATCHDOG=1") == 1
        notify.until("WATCHDOG=1", 10)  # and again: the loop pings as it turns
        with pipeline.lock:  # the loop gets stuck at its next frame
            at_frame.clear()
            assert at_frame.wait(10), "the analysis loop never reached a frame"
            notify.drain()  # a ping sent before it got stuck
            frames = pipeline.stats.frames
            silent = []
            deadline = time.monotonic() + 15 * interval
            while (left := deadline - time.monotonic()) > 0:
                if (message := notify.receive(left)) is not None:
                    silent.append(message)
            assert pipeline.stats.frames == frames, "the loop was not stuck"
        assert "WATCHDOG=1" not in lines(silent), f"pinged while stuck for {15 * interval:.1f}s: {silent}"
        # unstuck: the loop turns (it reaches the next frame) and pings again
        at_frame.clear()
        notify.until("WATCHDOG=1", 10)
        assert at_frame.wait(10), "the analysis loop did not go on"
