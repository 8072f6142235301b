"""Idempotent, atomic file writes: a re-run that changes nothing touches nothing.

Every file the provisioning tool produces goes through `write_file`, which compares content and
mode first (so unchanged files keep their mtime and the run can say "no changes") and otherwise
writes a temporary file beside the target, fsyncs it and renames it over the target, so a crash or
a full disk never leaves a half-written key or config behind.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.fsutil import atomic_write
from provisioning.errors import ProvisionError


@dataclass
class Changes:
    """What a command did, in order, so it can report it and tests can assert on it."""

    lines: list[str] = field(default_factory=list)

    def add(self, verb: str, what: str) -> None:
        self.lines.append(f"{verb:<9} {what}")

    def __bool__(self) -> bool:
        return bool(self.lines)

    def extend(self, other: Changes) -> None:
        self.lines.extend(other.lines)


def same_file(path: Path, data: bytes, mode: int) -> bool:
    try:
        st = path.stat()
        return (st.st_mode & 0o7777) == mode and path.read_bytes() == data
    except FileNotFoundError:
        return False


def write_file(path: Path, data: bytes, mode: int = 0o644) -> str | None:
    """Write `data` to `path` atomically with `mode`; return "created"/"updated", or None if it was right."""
    if same_file(path, data, mode):
        return None
    existed = path.exists()
    try:
        atomic_write(path, data, mode=mode)  # exact mode whatever the umask; fsync of file and folder
    except OSError as exc:
        raise ProvisionError(f"cannot write {path}: {exc.strerror or exc}") from None
    return "updated" if existed else "created"


def ensure_dir(path: Path, mode: int = 0o755) -> str | None:
    """Create `path` (and parents) with `mode`; return "created"/"updated" or None if it was right."""
    try:
        if path.is_dir():
            if (path.stat().st_mode & 0o7777) == mode:
                return None
            path.chmod(mode)
            return "updated"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    except OSError as exc:
        raise ProvisionError(f"cannot create directory {path}: {exc.strerror or exc}") from None
    return "created"


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Serialise commands on one fleet directory (two operators, or a script and a person)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisionError(
                f"another vigil-provision command is using this fleet ({lock_path})"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Plan:
    """Everything a command will write, built completely (and validated) before the first write."""

    dirs: list[tuple[Path, int]] = field(default_factory=list)
    files: list[tuple[str, Path, bytes, int]] = field(default_factory=list)

    def dir(self, path: Path, mode: int) -> None:
        self.dirs.append((path, mode))

    def file(self, group: str, path: Path, data: bytes, mode: int = 0o644) -> None:
        self.files.append((group, path, data, mode))

    def apply(self) -> dict[str, list[str]]:
        """Write what differs; per group, the names of the files created or updated."""
        changed: dict[str, list[str]] = {}
        for path, mode in self.dirs:
            ensure_dir(path, mode)
        for group, path, data, mode in self.files:
            if write_file(path, data, mode):
                changed.setdefault(group, []).append(path.name)
        return changed
