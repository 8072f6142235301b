"""The configured power-cycle command (a GPIO relay, a USB hub port) as a callable: the last
recovery step, and the only cure for some hung modems."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def shell_power_cycle(command: str, timeout_s: float, stop: threading.Event | None = None) -> Callable[[], bool]:
    """`command` run by the shell; the callable returns True when it exited 0.

    It runs in its own process group and is killed on timeout or when `stop` is set, so a stuck
    relay script can neither block the supervisor nor outlive the agent.
    """

    def run() -> bool:
        try:
            proc = subprocess.Popen(
                command,
                shell=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("power-cycle command could not run: %s", exc)
            return False
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                if time.monotonic() > deadline:
                    log.error("power-cycle command did not finish within %.0fs; killed", timeout_s)
                return False
            if stop is not None:
                stop.wait(0.05)
            else:
                time.sleep(0.05)
        output = (proc.stdout.read() if proc.stdout else "").strip().splitlines()
        if proc.returncode != 0:
            log.error("power-cycle command exited with %d %s", proc.returncode, output[-1] if output else "")
            return False
        return True

    return run
