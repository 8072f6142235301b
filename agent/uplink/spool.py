"""The durable outbox: every record that leaves the node is committed here first.

SQLite in WAL mode with ``synchronous=FULL``: a record is *accepted* when its transaction has
committed, and only then does it get its `id` and per-stream `seq` (in that same transaction, so a
crash can never leave a gap). Producers never wait for the disk: `accept()` queues in memory and a
committer thread groups commits (default every 200 ms) to spare the SD card. Records leave only
when the publisher acknowledges them (after the broker's PUBACK for that very record).

The spool is bounded by a byte budget and a free-space floor. When either is hit it evicts
telemetry first, then thumbnails, then the oldest event metadata; critical records go last. Every
drop is counted per class. Ages for TTLs are measured in *spool uptime* (monotonic time the spool
was open, summed over boots), raised to the wall-clock age only when the wall clock was trusted
both when the record was accepted and now, so a clock that jumps from 1970 to today neither
expires everything nor keeps records forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from agent.ids import new_id

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RECORD_OVERHEAD = 160  # bytes of SQLite row and index overhead counted per record


class Priority(IntEnum):
    CRITICAL = 0
    EVENT = 1
    THUMB = 2
    TELEMETRY = 3

    @property
    def label(self) -> str:
        return self.name.lower()


EVICTION_ORDER = (Priority.TELEMETRY, Priority.THUMB, Priority.EVENT, Priority.CRITICAL)


@dataclass
class Outgoing:
    """A record offered to the spool. `topic` is relative to ``{prefix}/{node}/`` and may contain
    ``{id}``, replaced at commit by the id of the first record of its group (thumbnails name their
    event). JSON bodies get `id` and, on sequenced streams, `seq` added at commit."""

    stream: str
    priority: Priority
    topic: str
    body: dict[str, Any] | bytes
    retain: bool = False
    sequenced: bool = True

    @property
    def approx_size(self) -> int:
        return len(self.body) if isinstance(self.body, bytes) else 256 + 64 * len(self.body)


@dataclass(frozen=True)
class Record:
    """A committed record as the publisher and listeners see it."""

    rowid: int
    id: str
    stream: str
    seq: int | None
    priority: Priority
    topic: str
    payload: bytes
    retain: bool
    accepted_uptime: float
    body: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def is_json(self) -> bool:
        return self.body is not None or self.payload[:1] == b"{"


@dataclass
class SpoolLimits:
    budget_bytes: int = 256 * 1024 * 1024
    free_floor_bytes: int = 64 * 1024 * 1024
    ttl_s: dict[Priority, float] = field(default_factory=lambda: {p: 7 * 86400.0 for p in Priority})
    commit_interval_s: float = 0.2
    max_pending_bytes: int = 16 * 1024 * 1024
    max_record_bytes: int = 4 * 1024 * 1024


class SpoolCorrupt(Exception):
    pass


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (priority INTEGER NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
                                  bytes INTEGER NOT NULL, PRIMARY KEY (priority, reason));
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    accepted_uptime REAL NOT NULL,
    accepted_wall REAL NOT NULL,
    wall_trusted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, rowid);
"""


class Spool:
    """Durable, bounded, prioritised outbox (one SQLite file); a lifecycle object with start/stop."""

    def __init__(
        self,
        path: Path,
        *,
        limits: SpoolLimits | None = None,
        clock_trusted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.path = path
        self.limits = limits or SpoolLimits()
        self._clock_trusted = clock_trusted
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()  # guards the connection
        self._cond = threading.Condition()  # guards the pending queues below
        self._pending: list[list[Outgoing]] = []
        self._pending_bytes = 0
        self._acks: set[int] = set()
        self._urgent = False
        self._flush_waiters = 0
        self._generation = 0  # increments after each commit; flush() waits on it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[list[Record]], None]] = []
        self._uptime_base = 0.0
        self._opened_mono = 0.0
        self._bytes = 0
        self._counts: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._bytes_by: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._drops_unsaved: dict[tuple[Priority, str], list[int]] = {}
        self.recovered_from: Path | None = None
        self.bytes_written = 0  # payload bytes committed this run (SD wear accounting)
        self.commits = 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Spool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open_checked()
        except SpoolCorrupt as exc:
            self._db = self._replace_corrupt(str(exc))
        self._load_state()
        self._thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)
        self._thread = None
        with self._lock:
            if self._db is not None:
                self._save_uptime()
                self._db.commit()
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
                self._db = None

    def __enter__(self) -> Spool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA journal_size_limit={max(64 * 1024, min(8 << 20, self.limits.budget_bytes // 8))}")
        db.execute("PRAGMA wal_autocheckpoint=256")
        return db

    def _open_checked(self) -> sqlite3.Connection:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        try:
            db = self._connect()
            if fresh:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.executescript(_DDL)
            if not fresh:
                (result,) = db.execute("PRAGMA quick_check").fetchone()
                if result != "ok":
                    db.close()
                    raise SpoolCorrupt(f"integrity check failed: {result}")
                version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if version is not None and int(version[0]) > SCHEMA_VERSION:
                    db.close()
                    raise SpoolCorrupt(
                        f"spool schema {version[0]} is newer than this agent ({SCHEMA_VERSION})"
                    )
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created_wall', ?)", (str(time.time()),))
            return db
        except sqlite3.DatabaseError as exc:
            raise SpoolCorrupt(str(exc)) from None

    def _replace_corrupt(self, reason: str) -> sqlite3.Connection:
        """Move a damaged spool aside (never delete it), keep its counters if readable, start afresh."""
        counters = self._salvage_counters()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                shutil.move(src, Path(str(aside) + suffix))
        log.error(
            "spool %s is unusable (%s); moved aside to %s and started a fresh one", self.path, reason, aside
        )
        self.recovered_from = aside
        db = self._open_checked()
        for stream, seq in counters.items():
            db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (stream, seq))
        return db

    def _salvage_counters(self) -> dict[str, int]:
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT stream, seq FROM counters").fetchall()
                top = db.execute(
                    "SELECT stream, MAX(seq) FROM records WHERE seq IS NOT NULL GROUP BY stream"
                ).fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return {}
        found = {s: int(q) for s, q in rows}
        for s, q in top:
            if q is not None:
                found[s] = max(found.get(s, 0), int(q))
        return found

    def _load_state(self) -> None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key='uptime'").fetchone()
        self._uptime_base = float(row[0]) if row else 0.0
        self._opened_mono = time.monotonic()
        self._recount()

    def _recount(self) -> None:
        assert self._db is not None
        self._counts = dict.fromkeys(Priority, 0)
        self._bytes_by = dict.fromkeys(Priority, 0)
        for prio, count, size in self._db.execute(
            "SELECT priority, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY priority"
        ):
            self._counts[Priority(prio)] = count
            self._bytes_by[Priority(prio)] = size + RECORD_OVERHEAD * count
        self._bytes = sum(self._bytes_by.values())

    # -- time -----------------------------------------------------------------------------------
    def uptime(self) -> float:
        """Seconds the spool has been open, summed over all runs (a monotonic clock that survives reboots)."""
        return self._uptime_base + (time.monotonic() - self._opened_mono)

    def _save_uptime(self) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('uptime', ?)", (repr(self.uptime()),))

    # -- producer side ----------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[list[Record]], None]) -> None:
        """Called from the committer thread with the records of each commit; must be quick."""
        self._listeners.append(fn)

    def accept(self, group: Iterable[Outgoing]) -> bool:
        """Queue a group of records for the next commit; never blocks on the disk.

        Returns False (and counts a drop) when the in-memory queue is full because the disk stopped
        keeping up; the lowest-priority queued records are shed first.
        """
        group = list(group)
        if not group:
            return True
        size = sum(o.approx_size for o in group)
        if size > self.limits.max_record_bytes:
            self._count_drop(group[0].priority, "too_large", size)
            log.warning("record of %d bytes refused (max %d)", size, self.limits.max_record_bytes)
            return False
        with self._cond:
            while self._pending_bytes + size > self.limits.max_pending_bytes and self._shed_pending(
                group[0].priority
            ):
                pass
            if self._pending_bytes + size > self.limits.max_pending_bytes:
                self._count_drop(group[0].priority, "queue_full", size)
                return False
            self._pending.append(group)
            self._pending_bytes += size
            if any(o.priority == Priority.CRITICAL for o in group):
                self._urgent = True
            self._cond.notify_all()
        return True

    def _shed_pending(self, incoming: Priority) -> bool:
        worst = max(range(len(self._pending)), key=lambda i: (self._pending[i][0].priority, -i), default=None)
        if worst is None or self._pending[worst][0].priority <= incoming:
            return False
        group = self._pending.pop(worst)
        dropped = sum(o.approx_size for o in group)
        self._pending_bytes -= dropped
        self._count_drop(group[0].priority, "queue_full", dropped)
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything queued so far; True when done within `timeout`."""
        with self._cond:
            target = self._generation + 1
            self._urgent = True
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                return self._cond.wait_for(
                    lambda: self._generation >= target or self._thread is None, timeout
                )
            finally:
                self._flush_waiters -= 1

    # -- publisher side ---------------------------------------------------------------------------
    def ack(self, rowids: Iterable[int]) -> None:
        """The broker acknowledged these records: delete them at the next commit."""
        with self._cond:
            self._acks.update(rowids)
            self._cond.notify_all()

    def next_records(
        self,
        limit: int,
        *,
        exclude: set[int] | frozenset[int] = frozenset(),
        live_since: float | None = None,
        backlog_share: float = 0.25,
        max_priority: Priority = Priority.TELEMETRY,
    ) -> list[Record]:
        """Up to `limit` records to publish next, highest priority first.

        Within a priority class, records accepted since `live_since` (spool uptime; the current
        connection) go before the backlog, but every 1/backlog_share-th record is taken from the
        backlog so it keeps draining.
        """
        if self._db is None or limit <= 0:
            return []
        excluded = set(exclude) | set(self._acks)
        chosen: list[Record] = []
        with self._lock:
            for prio in Priority:
                if prio > max_priority or len(chosen) >= limit:
                    break
                need = limit - len(chosen)
                fetch = need + len(excluded)
                if live_since is None:
                    rows = self._select(prio, None, None, fetch)
                    chosen.extend(r for r in rows if r.rowid not in excluded)
                    del chosen[limit:]
                    continue
                live = [r for r in self._select(prio, live_since, None, fetch) if r.rowid not in excluded]
                back = [r for r in self._select(prio, None, live_since, fetch) if r.rowid not in excluded]
                every = max(1, round(1 / backlog_share)) if backlog_share > 0 else 0
                while (live or back) and len(chosen) < limit:
                    take_backlog = not live or (back and every and (len(chosen) + 1) % every == 0)
                    chosen.append(back.pop(0) if take_backlog else live.pop(0))
        return chosen[:limit]

    def _select(self, prio: Priority, after: float | None, before: float | None, limit: int) -> list[Record]:
        assert self._db is not None
        sql = (
            "SELECT rowid, id, stream, seq, priority, topic, payload, retain, accepted_uptime FROM records "
            "WHERE priority=?"
        )
        args: list[Any] = [int(prio)]
        if after is not None:
            sql += " AND accepted_uptime >= ?"
            args.append(after)
        if before is not None:
            sql += " AND accepted_uptime < ?"
            args.append(before)
        sql += " ORDER BY rowid LIMIT ?"
        args.append(limit)
        return [
            Record(r[0], r[1], r[2], r[3], Priority(r[4]), r[5], bytes(r[6]), bool(r[7]), r[8])
            for r in self._db.execute(sql, args)
        ]

    # -- committer ------------------------------------------------------------------------------
    def _run(self) -> None:
        last_housekeeping = 0.0
        while True:
            with self._cond:
                if not self._stop.is_set() and not self._urgent:
                    self._cond.wait(self.limits.commit_interval_s)
                groups, self._pending, self._pending_bytes = self._pending, [], 0
                acks, self._acks = self._acks, set()
                self._urgent = False
                stopping = self._stop.is_set()
            try:
                records = self._commit(groups, acks)
                now = time.monotonic()
                if now - last_housekeeping > 30.0 or stopping:
                    self._housekeeping()
                    last_housekeeping = now
            except sqlite3.Error:
                log.exception("spool commit failed; will retry")
                with self._cond:  # keep what we had: requeue in front
                    self._pending[:0] = groups
                    self._pending_bytes += sum(o.approx_size for g in groups for o in g)
                    self._acks |= acks
                if not stopping:
                    self._stop.wait(1.0)
                records = []
            with self._cond:
                self._generation += 1
                self._cond.notify_all()
            for listener in self._listeners:
                try:
                    if records:
                        listener(records)
                except Exception:
                    log.exception("spool listener %r failed", listener)
            if stopping:
                with self._cond:
                    if not self._pending and not self._acks:
                        return

    def _commit(self, groups: list[list[Outgoing]], acks: set[int]) -> list[Record]:
        if not groups and not acks:
            return []
        committed: list[Record] = []
        uptime = self.uptime()
        wall = time.time()
        trusted = bool(self._clock_trusted())
        with self._lock:
            db = self._db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                if acks:
                    self._delete_rows(sorted(acks), reason=None)
                for group in groups:
                    group_id = new_id()
                    for index, item in enumerate(group):
                        record_id = group_id if index == 0 or isinstance(item.body, bytes) else new_id()
                        seq = None
                        body = None
                        if isinstance(item.body, bytes):
                            payload = item.body
                        else:
                            body = dict(item.body)
                            body["id"] = record_id
                            if item.sequenced:
                                seq = self._next_seq(item.stream)
                                body["seq"] = seq
                            payload = _encode(body)
                        topic = item.topic.replace("{id}", group_id)
                        cur = db.execute(
                            "INSERT INTO records (id, stream, seq, priority, topic, payload, size, retain, "
                            "accepted_uptime, accepted_wall, wall_trusted) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            (
                                record_id,
                                item.stream,
                                seq,
                                int(item.priority),
                                topic,
                                payload,
                                len(payload),
                                int(item.retain),
                                uptime,
                                wall,
                                int(trusted),
                            ),
                        )
                        rowid = int(cur.lastrowid or 0)
                        prio = item.priority
                        self._counts[prio] += 1
                        self._bytes_by[prio] += len(payload) + RECORD_OVERHEAD
                        self._bytes += len(payload) + RECORD_OVERHEAD
                        self.bytes_written += len(payload)
                        committed.append(
                            Record(
                                rowid,
                                record_id,
                                item.stream,
                                seq,
                                prio,
                                topic,
                                payload,
                                item.retain,
                                uptime,
                                body,
                            )
                        )
                evicted = self._enforce_budget() if committed else set()
                self._save_drops()
                self._save_uptime()
                db.execute("COMMIT")
                self.commits += 1
            except BaseException:
                db.execute("ROLLBACK")
                self._recount()
                raise
        # a record evicted in its own commit (the spool is full of higher priorities) was never accepted
        return [r for r in committed if r.rowid not in evicted]

    def _next_seq(self, stream: str) -> int:
        assert self._db is not None
        row = self._db.execute("SELECT seq FROM counters WHERE stream=?", (stream,)).fetchone()
        seq = (row[0] if row else 0) + 1
        self._db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (stream, seq))
        return seq

    def _delete_rows(self, rowids: list[int], reason: str | None) -> None:
        """Delete rows (acked, or dropped for `reason`), keeping the byte accounting right."""
        assert self._db is not None
        for start in range(0, len(rowids), 500):
            chunk = rowids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT priority, COUNT(*), SUM(size) FROM records WHERE rowid IN ({marks}) GROUP BY priority",
                chunk,
            ).fetchall()
            self._db.execute(f"DELETE FROM records WHERE rowid IN ({marks})", chunk)
            for prio, count, size in rows:
                p = Priority(prio)
                self._counts[p] -= count
                freed = size + RECORD_OVERHEAD * count
                self._bytes_by[p] -= freed
                self._bytes -= freed
                if reason is not None:
                    self._count_drop(p, reason, size, count)

    def _count_drop(self, prio: Priority, reason: str, size: int, count: int = 1) -> None:
        """Count a drop in memory; it is written with the next commit (never a write of its own)."""
        with self._cond:
            entry = self._drops_unsaved.setdefault((prio, reason), [0, 0])
            entry[0] += count
            entry[1] += size
        log.warning("spool dropped %d %s record(s) (%s, %d bytes)", count, prio.label, reason, size)

    def _save_drops(self) -> None:
        assert self._db is not None
        with self._cond:
            unsaved, self._drops_unsaved = self._drops_unsaved, {}
        for (prio, reason), (count, size) in unsaved.items():
            self._db.execute(
                "INSERT INTO drops VALUES (?,?,?,?) ON CONFLICT(priority, reason) DO UPDATE SET "
                "count=count+excluded.count, bytes=bytes+excluded.bytes",
                (int(prio), reason, count, size),
            )

    # -- bounds ---------------------------------------------------------------------------------
    def _allowed_bytes(self) -> int:
        """Logical bytes we may hold: the budget minus SQLite's own overhead, capped by free space."""
        allowed = int(self.limits.budget_bytes * 0.75)
        try:
            st = os.statvfs(self.path.parent)
            free = st.f_bavail * st.f_frsize
            headroom = free - self.limits.free_floor_bytes
            allowed = min(allowed, self._bytes + headroom)
        except OSError:
            pass
        return allowed

    def _enforce_budget(self) -> set[int]:
        """Evict in EVICTION_ORDER, oldest first, until within bounds; returns the evicted rowids."""
        allowed = self._allowed_bytes()
        evicted: set[int] = set()
        for prio in EVICTION_ORDER:
            while self._bytes > allowed and self._counts[prio] > 0:
                assert self._db is not None
                rows = self._db.execute(
                    "SELECT rowid, size FROM records WHERE priority=? ORDER BY rowid LIMIT 256", (int(prio),)
                ).fetchall()
                if not rows:
                    break
                victims = []
                excess = self._bytes - allowed
                for rowid, size in rows:
                    if excess <= 0:
                        break
                    victims.append(rowid)
                    excess -= size + RECORD_OVERHEAD
                self._delete_rows(victims, reason="budget")
                evicted.update(victims)
        return evicted

    def _housekeeping(self) -> None:
        """Expire records past their TTL and give freed pages back to the filesystem."""
        with self._lock:
            if self._db is None:
                return
            now_uptime = self.uptime()
            now_wall = time.time()
            trusted_now = bool(self._clock_trusted())
            expired: list[int] = []
            for prio, ttl in self.limits.ttl_s.items():
                # age is spool uptime, or the wall-clock age when the clock was trusted then and now
                wall_cut = now_wall - ttl if trusted_now else -1.0
                expired.extend(
                    r[0]
                    for r in self._db.execute(
                        "SELECT rowid FROM records WHERE priority=? AND (accepted_uptime < ? "
                        "OR (wall_trusted=1 AND accepted_wall < ?))",
                        (int(prio), now_uptime - ttl, wall_cut),
                    )
                )
            if expired or self._drops_unsaved:
                self._db.execute("BEGIN IMMEDIATE")
                self._delete_rows(expired, reason="ttl")
                self._save_drops()
                self._db.execute("COMMIT")
            if self.disk_bytes() > self.limits.budget_bytes * 0.9:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- reporting ------------------------------------------------------------------------------
    def disk_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.stat(str(self.path) + suffix).st_size
        return total

    def seq(self, stream: str) -> int:
        with self._lock:
            assert self._db is not None
            row = self._db.execute("SELECT seq FROM counters WHERE stream=?", (stream,)).fetchone()
        return int(row[0]) if row else 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            assert self._db is not None
            per = {}
            now = self.uptime()
            for prio in Priority:
                row = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(accepted_uptime), MIN(accepted_wall) "
                    "FROM records WHERE priority=?",
                    (int(prio),),
                ).fetchone()
                drops = {
                    reason: {"count": c, "bytes": b}
                    for reason, c, b in self._db.execute(
                        "SELECT reason, count, bytes FROM drops WHERE priority=?", (int(prio),)
                    )
                }
                for (p, reason), (c, b) in list(self._drops_unsaved.items()):
                    if p == prio:
                        cur = drops.setdefault(reason, {"count": 0, "bytes": 0})
                        cur["count"] += c
                        cur["bytes"] += b
                per[prio.label] = {
                    "depth": row[0],
                    "bytes": row[1],
                    "oldest_age_s": round(now - row[2], 1) if row[2] is not None else None,
                    "oldest_accepted_wall": row[3],
                    "drops": drops,
                }
            counters = dict(self._db.execute("SELECT stream, seq FROM counters"))
        return {
            "path": str(self.path),
            "depth": sum(v["depth"] for v in per.values()),
            "bytes": self._bytes,
            "disk_bytes": self.disk_bytes(),
            "budget_bytes": self.limits.budget_bytes,
            "classes": per,
            "seq": counters,
            "uptime_s": round(now, 1),
            "recovered_from": str(self.recovered_from) if self.recovered_from else None,
        }
