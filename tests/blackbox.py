"""The agent as a black box, for the power-cut tests (tests/powercut.py): a real `python -m agent`
process whose printed events are collected, `agent spool stats --json` on its state directory, and
an independent subscriber with a persistent session as the oracle of what was delivered. Only the
agent's public surface is used, so these outlive any rewrite of its internals."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT, agent_env

NODE = "pole-pc"


# -- the oracle ------------------------------------------------------------------------------------
class Oracle:
    """An independent subscriber with a persistent session (clean_session=False, QoS 1): records
    every event and thumbnail the broker delivers, duplicates included."""

    def __init__(self, url: str, node: str = NODE) -> None:
        host, port = url.split("://")[1].rsplit(":", 1)
        self.base = f"vigil/{node}"
        self.events: list[dict[str, Any]] = []
        self.thumbs: dict[str, list[bytes]] = defaultdict(list)
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"powercut-oracle-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv311,
            clean_session=False,
        )
        self.client.on_connect = lambda c, *a: c.subscribe(
            [(f"{self.base}/events", 1), (f"{self.base}/thumbs/+", 1)]
        )
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the oracle could not subscribe")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            if message.topic == f"{self.base}/events":
                self.events.append(json.loads(message.payload))
            else:
                self.thumbs[message.topic.rsplit("/", 1)[1]].append(bytes(message.payload))
            self._cond.notify_all()

    def seqs(self) -> set[int]:
        with self._cond:
            return {e["seq"] for e in self.events}

    def wait_seqs(self, wanted: Callable[[], int], timeout: float, alive: Callable[[], bool]) -> bool:
        """Until every seq 1..wanted() has arrived (wanted may grow), or `alive()` turns false."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                have = {e["seq"] for e in self.events}
                if have.issuperset(range(1, wanted() + 1)):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not alive():
                    return False
                self._cond.wait(min(left, 0.5))  # also re-check the agent's liveness twice a second

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- the agent as a process ------------------------------------------------------------------------
class AgentProcess:
    """`python -m agent --simulate …` as a real process; a reader thread keeps every event it prints
    (one JSON line per accepted event) and notices when it exits."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, label: str) -> None:
        self.label = label
        with log.open("a") as fh:
            fh.write(f"\n===== {label}: {' '.join(argv)}\n")
        self._log = log.open("ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *argv],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
        )
        self.printed: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name=f"agent-stdout-{label}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                with self._cond:
                    self.printed.append(event)
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_printed(self, count: int, timeout: float) -> bool:
        """Until the agent has printed `count` events; False on timeout or if it exited."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.printed) >= count or self._eof, timeout) and (
                len(self.printed) >= count
            )

    def wait_exit(self, timeout: float) -> bool:
        """Until the agent's stdout closes (it exited) or `timeout`: the random moment of a cut."""
        with self._cond:
            return self._cond.wait_for(lambda: self._eof, timeout)

    def max_seq(self) -> int:
        with self._cond:
            return max((e["seq"] for e in self.printed), default=0)

    def terminate(self, timeout: float = 20.0) -> int:
        """A clean stop (SIGTERM), as systemd does it."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.close()
        return rc

    def close(self) -> None:
        """After the process is gone (killed or exited): reap it and collect the rest of stdout."""
        self.proc.wait(30)
        self._reader.join(10)
        self._log.close()


def spool_stats(state: Path) -> dict[str, Any]:
    """`agent spool stats --json` on a state directory whose agent is not running."""
    res = subprocess.run(
        [sys.executable, "-m", "agent", "spool", "stats", "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=agent_env(),
        timeout=60,
    )
    if res.returncode != 0:
        raise RuntimeError(f"agent spool stats failed ({res.returncode}): {res.stderr.strip()}")
    return json.loads(res.stdout)
