"""One agent per state directory: an exclusive lock held for the life of the process.

Two agents on one state directory would share the spool (each deleting what the other sent), the seq
counters and the audit log. A technician who starts `agent` by hand beside the service must get a
clear refusal, not a quiet fight over the SD card. The lock is an `flock` on `agent.lock`, so it dies
with the process (kill -9, power cut) and never needs cleaning up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "agent.lock"


class StateDirBusy(Exception):
    """Another live process holds the state directory; the message says which and what to do."""


class StateDirLock:
    """`with StateDirLock(dir):` or acquire()/release(); refuses with StateDirBusy when held elsewhere."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> StateDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirBusy(
                f"state directory {self.path.parent} is in use by another agent{holder}; stop it first "
                "(e.g. `systemctl stop vigil-agent`) or give this one its own --state-dir"
            ) from None
        except OSError:
            os.close(fd)
            raise
        # who holds it, for the next one's error message (not part of the locking itself)
        info = json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode() + b"\n", 0)
        self._fd = fd
        return self

    def start(self) -> StateDirLock:
        return self.acquire()

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), "held": self._fd is not None}

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def stop(self, deadline: float | None = None) -> None:
        """A stage of the agent: stopped last, after the spool has committed (never blocks)."""
        self.release()

    def __enter__(self) -> StateDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        info = json.loads(os.pread(fd, 256, 0) or b"{}")
        return f" (pid {int(info['pid'])}, since {info['since']})"
    return ""
