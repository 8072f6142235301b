"""Bringing a spool from an older agent along: the SQLite spool (`spool.db`, schema 1) that agents
before the segment log kept beside the spool directory. Its waiting records keep their ids, seqs
and ages; a damaged file is moved aside (never deleted) and its seq counters are salvaged as far as
they can be read, so seq continues and consumers see a gap for what was lost instead of seq
starting again."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class LegacySpool:
    """What an old spool held."""

    records: list[tuple[int, str, str, int | None, int, str, bytes, bool, float, float, bool]] = field(
        default_factory=list
    )  # rowid, id, stream, seq, priority, topic, payload, retain, uptime, wall, trusted
    seq: dict[str, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    drops: list[list[object]] = field(default_factory=list)  # [priority, reason, count, bytes]
    uptime: float = 0.0
    set_aside: Path | None = None
    problem: str | None = None


def legacy_path(spool_dir: Path) -> Path:
    return spool_dir.with_name("spool.db")


def read_legacy(path: Path) -> LegacySpool:
    """Read an old spool; a damaged one is moved aside with what could be salvaged."""
    found = LegacySpool()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            found.records = [
                (r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), bool(r[7]), r[8], r[9], bool(r[10]))
                for r in db.execute(
                    "SELECT rowid, id, stream, seq, priority, topic, payload, retain, accepted_uptime, "
                    "accepted_wall, wall_trusted FROM records ORDER BY rowid"
                )
            ]
            found.seq = {str(s): int(n) for s, n in db.execute("SELECT stream, seq FROM counters")}
            for key, value in db.execute("SELECT key, value FROM meta"):
                if key == "uptime":
                    found.uptime = float(value)
                elif key.startswith("x."):
                    found.meta[key[2:]] = value
            found.drops = [
                list(row) for row in db.execute("SELECT priority, reason, count, bytes FROM drops")
            ]
        finally:
            db.close()
    except sqlite3.Error as exc:
        found = LegacySpool(seq=_salvage_counters(path), problem=str(exc))
        found.set_aside = _move_aside(path)
        log.error("old spool %s is unusable (%s); moved aside to %s", path, exc, found.set_aside)
    return found


def remove_legacy(path: Path) -> None:
    """The old spool has been imported and the import is on disk: its files can go."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(path) + suffix)


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            shutil.move(src, Path(str(aside) + suffix))
    return aside


def _salvage_counters(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return found
    try:
        for query in (
            "SELECT stream, seq FROM counters",
            "SELECT stream, MAX(seq) FROM records WHERE seq IS NOT NULL GROUP BY stream",
        ):
            with contextlib.suppress(sqlite3.Error):  # each on its own: damaged records may hide counters
                for stream, seq in _rows(db, query):
                    if seq is not None:
                        found[str(stream)] = max(found.get(str(stream), 0), int(seq))
    finally:
        db.close()
    return found


def _rows(db: sqlite3.Connection, query: str) -> Iterator[tuple[Any, Any]]:
    yield from db.execute(query)
