"""What systemd's Restart=always does for vigil-agent.service, for tests: start the service's command
line, and whenever it exits, start it again (after RestartSec), recording every run."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    number: int
    pid: int
    log: Path
    started: float
    code: int | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class RestartLoop:
    def __init__(self, argv: list[str], *, env: dict[str, str], logs: Path, restart_sec: float = 0.5) -> None:
        self.argv = argv
        self.env = env
        self.logs = logs
        self.restart_sec = restart_sec
        self.runs: list[Run] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="restart-loop", daemon=True)

    def __enter__(self) -> RestartLoop:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            number = len(self.runs) + 1
            log = self.logs / f"run-{number:02d}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT)
            run = Run(number, proc.pid, log, time.monotonic())
            with self._cond:
                self._proc = proc
                self.runs.append(run)
                self._cond.notify_all()
            if self._stop.is_set():  # stop() came while this run was being started
                proc.terminate()
            code = proc.wait()
            with self._cond:
                run.code = code
                self._proc = None
                self._cond.notify_all()
            self._stop.wait(self.restart_sec)  # RestartSec

    def wait_for(self, predicate: Callable[[list[Run]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.runs), timeout)

    def exits(self) -> list[int | None]:
        with self._cond:
            return [r.code for r in self.runs]

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        with self._cond:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        self._thread.join(timeout)
