"""The node's audit log: who changed what, and every request for a full frame.

Append-only JSON lines under <state_dir>/audit/audit.jsonl, one fsync'd write per entry (entries
are rare: config and rule changes, snapshot requests, model changes, starts). Each entry carries
the sha256 of the previous line (`prev`), so a line removed or edited later breaks the chain and
`agent privacy audit --verify` says where. The file is rotated by size (audit.1.jsonl is the
newest rotated file) and the oldest rotated file is dropped, so the log is bounded on an SD card.

Time: `ts` is the wall clock with `trusted` saying whether it was synchronised; `boot` and `mono`
order entries within one boot when it was not (field notes: no RTC on a Pi).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.clock import Clock, boot_id, rfc3339

log = logging.getLogger(__name__)

FILE = "audit.jsonl"
GENESIS = "0" * 64

_registry: dict[Path, AuditLog] = {}
_registry_lock = threading.Lock()


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


class AuditLog:
    """Thread-safe, append-only audit log. Use `AuditLog.open(folder)` to share one per folder."""

    def __init__(
        self, folder: Path, *, max_bytes: int = 1 << 20, keep: int = 5, clock: Clock | None = None
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.keep = keep
        self._clock = clock
        self._boot = clock.boot_id if clock is not None else boot_id()
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = self._tail()

    @classmethod
    def open(cls, folder: Path, **kwargs: Any) -> AuditLog:
        """The process-wide log for `folder` (two writers on one file would break the chain)."""
        key = folder.expanduser().resolve()
        with _registry_lock:
            found = _registry.get(key)
            if found is None:
                found = _registry[key] = cls(key, **kwargs)
            return found

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def _tail(self) -> tuple[int, str]:
        """Sequence number and digest of the newest entry (current file, else newest rotated one)."""
        for path in (self.path, self.folder / "audit.1.jsonl"):
            last = _last_line(path)
            if last is not None:
                try:
                    seq = int(json.loads(last).get("seq", 0))
                except (ValueError, AttributeError):
                    seq = 0
                return seq, _digest(last)
        return 0, GENESIS

    def record(self, action: str, actor: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one entry and fsync it. `action` is dotted (config.change, snapshot.request,
        snapshot.sent, model.change, rules.update, masks.update, agent.start); `actor` says who or
        what asked (e.g. "mqtt:cmd/config/set req=42", "rule:loitering", "startup")."""
        with self._lock:
            wall = time.time()
            trusted = bool(self._clock.state().trusted) if self._clock is not None else False
            entry = {
                "seq": self._seq + 1,
                "ts": rfc3339(wall),
                "trusted": trusted,
                "boot": self._boot,
                "mono": round(time.monotonic(), 3),
                "action": action,
                "actor": actor,
                "details": details or {},
                "prev": self._prev,
            }
            line = json.dumps(entry, separators=(",", ":"), sort_keys=True, default=str)
            self._rotate_if_needed(len(line) + 1)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq, self._prev = entry["seq"], _digest(line)
        log.debug("audit: %s by %s", action, actor)
        return entry

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes:
            return
        oldest = self.folder / f"audit.{self.keep}.jsonl"
        oldest.unlink(missing_ok=True)
        for index in range(self.keep - 1, 0, -1):
            src = self.folder / f"audit.{index}.jsonl"
            if src.exists():
                os.replace(src, self.folder / f"audit.{index + 1}.jsonl")
        os.replace(self.path, self.folder / "audit.1.jsonl")
        _fsync_dir(self.folder)

    def files(self) -> list[Path]:
        """Oldest first."""
        rotated = sorted(
            self.folder.glob("audit.*.jsonl"), key=lambda p: int(p.name.split(".")[1]), reverse=True
        )
        return [*rotated, *([self.path] if self.path.exists() else [])]

    def entries(self) -> Iterator[dict[str, Any]]:
        for path in self.files():
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        yield json.loads(line)

    def verify(self) -> list[str]:
        """Problems in the hash chain (empty: intact). The oldest kept entry starts the chain."""
        problems: list[str] = []
        prev: str | None = None
        last_seq: int | None = None
        for path in self.files():
            with path.open(encoding="utf-8") as fh:
                for number, raw in enumerate(fh, start=1):
                    line = raw.rstrip("\n")
                    if not line:
                        continue
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        problems.append(f"{path.name}:{number}: not JSON")
                        prev = None
                        continue
                    if prev is not None and entry.get("prev") != prev:
                        problems.append(f"{path.name}:{number}: chain broken (an earlier entry was altered)")
                    if last_seq is not None and entry.get("seq") != last_seq + 1:
                        problems.append(f"{path.name}:{number}: seq {entry.get('seq')} follows {last_seq}")
                    prev, last_seq = _digest(line), entry.get("seq")
        return problems


def _last_line(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return None
    return lines[-1] if lines else None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
