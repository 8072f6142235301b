"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, a cluster made with initdb
in a temporary directory, served on a free port and a private Unix socket, stopped and removed after.

initdb and pg_ctl refuse to run as root (FIELD-NOTES), so as root the cluster belongs to the
`postgres` system user the Debian package creates, and its directory lives outside pytest's
root-only temp tree.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.brokers import free_port

SUPERUSER = "vigil"


def pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class PostgresServer:
    """`start()`, `url(db)`, `create_database()`, `crash()` (SIGKILL the postmaster), `stop()`."""

    def __init__(self) -> None:
        binaries = pg_bin()
        if binaries is None:
            pytest.skip("PostgreSQL is not installed (./scripts/setup installs Debian's postgresql)")
        self.bin = binaries
        self.owner = "postgres" if os.geteuid() == 0 else None
        if self.owner is not None:
            try:
                pwd.getpwnam(self.owner)
            except KeyError:
                pytest.skip("running as root needs the postgres system user (Debian's postgresql package)")
        self.root = Path(tempfile.mkdtemp(prefix="vigil-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.socket_dir.mkdir()
        self.port = free_port()
        self._names = itertools.count(1)
        if self.owner is not None:
            shutil.chown(self.root, self.owner)
            shutil.chown(self.socket_dir, self.owner)

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [*cmd]
        if self.owner is not None:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root)

    def _check(self, res: subprocess.CompletedProcess[str], what: str) -> None:
        if res.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} failed: {res.stdout}{res.stderr}\n{tail}")

    def start(self) -> PostgresServer:
        if not self.data.exists():
            res = self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            )
            self._check(res, "initdb")
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=''"
        res = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self._check(res, "pg_ctl start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def crash(self) -> None:
        """Abort every server process at once (`pg_ctl stop -m immediate`: no checkpoint, no clean
        shutdown); every connection drops and the next start runs crash recovery."""
        res = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._check(res, "pg_ctl stop -m immediate")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60
            )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def need_psycopg() -> None:
    pytest.importorskip(
        "psycopg", reason="PostgreSQL tests need psycopg (the fleet extra; ./scripts/setup installs it)"
    )
