"""RabbitMQ brokers for tests: one Erlang node per broker (its own name, ports and directories) on
this machine, run from Debian's rabbitmq-server with a given configuration, and clusters of them.

The scripts in /usr/lib/rabbitmq/bin are run directly (the /usr/sbin wrappers switch to the rabbitmq
user); every broker of a cluster gets the same Erlang cookie through a shared HOME. A broker is
started in its own process group, so `kill()` (SIGKILL to that group) takes the whole Erlang VM down
at once, like a crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.brokers import free_port, wait_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def rabbitmq_available() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists()


def need_rabbitmq() -> None:
    if not rabbitmq_available():
        pytest.skip("rabbitmq-server is not installed (./scripts/setup installs it)")


class RabbitNode:
    """One broker: `start()`, `kill()` (SIGKILL), `stop()` (clean), `ctl(...)` (rabbitmqctl)."""

    def __init__(
        self,
        base: Path,
        *,
        name: str,
        config: Path,
        plugins: Path,
        cookie_home: Path,
        mqtt_port: int,
        advanced: Path | None = None,
    ) -> None:
        self.base = base
        self.node = name
        self.mqtt_port = mqtt_port
        self.proc: subprocess.Popen | None = None
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_BASE": str(base),
            "RABBITMQ_CONFIG_FILE": str(config.with_suffix("")),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_PID_FILE": str(base / "pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
            "HOME": str(cookie_home),
        }
        if advanced is not None:
            self.env["RABBITMQ_ADVANCED_CONFIG_FILE"] = str(advanced)

    def start(self, timeout: float = 120.0) -> RabbitNode:
        log = (self.base / "server.out").open("ab")
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            wait_port(self.mqtt_port, timeout=timeout, proc=self.proc)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            tail = (self.base / "server.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"rabbitmq {self.node} did not start: {exc}\n{tail}") from None
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole broker (its Erlang VM and helpers), like a crash or a power cut."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("stop", timeout=60, check=False)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {res.stdout}{res.stderr}")
        return res

    def wait_cluster(self, members: int, timeout: float = 120.0) -> None:
        """Until this broker sees `members` running brokers in its cluster."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:  # rabbitmqctl itself may take long on a busy machine, or while a broker rejoins
                res = self.ctl("cluster_status", "--formatter", "json", check=False, timeout=60)
            except subprocess.TimeoutExpired:
                continue
            last = res.stdout + res.stderr
            if res.returncode == 0 and _running(res.stdout) >= members:
                return
            time.sleep(0.5)  # polling an external daemon's state, not synchronising our own threads
        raise TimeoutError(f"{self.node}: cluster of {members} not formed: {last[-1000:]}")


def _running(status_json: str) -> int:
    import json

    try:
        return len(json.loads(status_json).get("running_nodes", []))
    except ValueError:
        return 0


def cookie_home(folder: Path) -> Path:
    """A HOME with an Erlang cookie every broker of one cluster (and rabbitmqctl) shares."""
    folder.mkdir(parents=True, exist_ok=True)
    cookie = folder / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(os.urandom(16).hex().upper())
        cookie.chmod(0o400)
    return folder
