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

import bisect
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
ROW_OVERHEAD = 96  # SQLite cell, rowid and index entry per record, measured
PAGE_SIZE = 4096


def disk_cost(size: int, page_size: int = PAGE_SIZE) -> int:
    """Bytes a record of `size` payload bytes occupies in the database file.

    Small rows share pages; a payload larger than about a quarter page spills into overflow pages
    that are never shared, so a 6 kB thumbnail costs two whole pages, not 6 kB.
    """
    if size + ROW_OVERHEAD <= page_size // 4:
        return size + ROW_OVERHEAD
    return -(-(size + ROW_OVERHEAD) // (page_size - 4)) * page_size


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
    """The file is damaged (SQLite says corrupt / not a database, or the integrity check fails)."""


class SpoolUnavailable(Exception):
    """The spool cannot be opened for another reason (locked by another process, disk full, I/O
    error); the file may be fine, so it is left alone and the agent refuses to start."""


# SQLite result codes that mean the file itself is damaged (anything else may be transient)
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (priority INTEGER NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
                                  bytes INTEGER NOT NULL, PRIMARY KEY (priority, reason));
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: in-flight and acked ids stay unambiguous
    id TEXT NOT NULL,
    stream TEXT NOT NULL,
    seq INTEGER,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    cost INTEGER NOT NULL,
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
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits or SpoolLimits()
        self._clock_trusted = clock_trusted
        self._mono = monotonic  # injectable so tests can jump clocks
        self._wall = wall
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()  # guards the connection
        self._cond = threading.Condition()  # guards the pending queues below
        self._pending: list[list[Outgoing]] = []
        self._pending_bytes = 0
        self._acks: set[int] = set()  # acknowledged, deleted at the next commit
        self._acks_unmarked: list[int] = []  # acknowledged, not yet in the in-memory temp.skip table
        self._drops_pending: set[tuple[int, str]] = set()
        self._meta_pending: dict[str, str] = {}  # small state other stages persist with the next commit
        self._mark_uptimes: list[float] = []  # per commit: accepted_uptime and first rowid
        self._mark_rowids: list[int] = []
        self._next_rowid_hint = 1 << 62  # no commit yet in this run: everything stored is backlog
        self._urgent = False
        self._generation = 0  # increments after each commit pass
        self._offered = 0  # groups queued by accept()
        self._settled = 0  # groups committed or shed; flush() waits for it to catch up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[list[Record]], None]] = []
        self._uptime_base = 0.0
        self._opened_mono = 0.0
        self._bytes = 0
        self._counts: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._bytes_by: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._drops_unsaved: dict[tuple[Priority, str], list[int]] = {}
        self._drops_saving: dict[tuple[Priority, str], list[int]] = {}  # written, not yet committed
        self.recovered_from: Path | None = None
        self._housekeeping_runs = 0
        self._connect_timeout = 10.0  # seconds to wait for a lock held by another process
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
        if self._thread.is_alive():
            log.error("spool committer did not stop within %.1fs; leaving the database open", timeout)
            return
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
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._connect_timeout
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA temp_store=MEMORY")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS skip (rowid INTEGER PRIMARY KEY)")
        db.execute(f"PRAGMA journal_size_limit={self._batch_limit}")
        db.execute(f"PRAGMA wal_autocheckpoint={max(16, self._batch_limit // PAGE_SIZE)}")
        return db

    @property
    def _batch_limit(self) -> int:
        """Most bytes written in one transaction: bounds the WAL, which counts against the budget."""
        return max(32 * 1024, min(16 << 20, self.limits.budget_bytes // 32))

    def _open_checked(self) -> sqlite3.Connection:
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        try:
            db = self._connect()
            if fresh:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")
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
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created_wall', ?)", (str(self._wall()),))
            return db
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None and code & 0xFF in _DAMAGED:
                raise SpoolCorrupt(str(exc)) from None
            hint = (
                " (is another agent using the same state directory?)"
                if code is not None and code & 0xFF == 5
                else ""
            )
            raise SpoolUnavailable(f"cannot open spool {self.path}: {exc}{hint}") from None

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
        """The seq counters of a damaged spool, as far as they can still be read, so seq continues
        (consumers then see a gap for what was lost instead of seq starting again at 1)."""
        found: dict[str, int] = {}
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error:
            return found
        try:
            for query in (
                "SELECT stream, seq FROM counters",
                "SELECT stream, MAX(seq) FROM records WHERE seq IS NOT NULL GROUP BY stream",
            ):
                try:  # each on its own: a damaged records table must not hide intact counters
                    for stream, seq in db.execute(query):
                        if seq is not None:
                            found[stream] = max(found.get(stream, 0), int(seq))
                except sqlite3.Error:
                    continue
        finally:
            db.close()
        return found

    def _load_state(self) -> None:
        assert self._db is not None
        row = self._db.execute("SELECT value FROM meta WHERE key='uptime'").fetchone()
        self._uptime_base = float(row[0]) if row else 0.0
        self._opened_mono = self._mono()
        self._recount()

    def _recount(self) -> None:
        assert self._db is not None
        self._counts = dict.fromkeys(Priority, 0)
        self._bytes_by = dict.fromkeys(Priority, 0)
        for prio, count, cost in self._db.execute(
            "SELECT priority, COUNT(*), COALESCE(SUM(cost), 0) FROM records GROUP BY priority"
        ):
            self._counts[Priority(prio)] = count
            self._bytes_by[Priority(prio)] = cost
        self._bytes = sum(self._bytes_by.values())

    # -- time -----------------------------------------------------------------------------------
    def uptime(self) -> float:
        """Seconds the spool has been open, summed over all runs (a monotonic clock that survives reboots)."""
        return self._uptime_base + (self._mono() - self._opened_mono)

    def _save_uptime(self) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('uptime', ?)", (repr(self.uptime()),))

    # -- producer side ----------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[list[Record]], None]) -> None:
        """Called from the committer thread with the records of each commit; must be quick."""
        self._listeners.append(fn)

    def accept(self, group: Iterable[Outgoing]) -> bool:
        """Queue a group of records for the next commit; never blocks on the disk.

        The first record of a group is its primary (an event); the others ride along (its
        thumbnail). When the in-memory queue is full because the disk stopped keeping up, the
        lowest-priority queued records are shed first (a thumbnail before its event). Returns False,
        counting the drop, when the primary record itself cannot be queued.
        """
        group = list(group)
        if not group:
            return True
        for item in group:
            if not isinstance(item.body, bytes):
                try:
                    _encode(item.body)
                except (TypeError, ValueError) as exc:  # refuse it here: the committer must never choke
                    self._count_drop(item.priority, "unencodable", 0)
                    log.error("record for %s refused: not JSON-serialisable (%s)", item.topic, exc)
                    return False
        size = sum(o.approx_size for o in group)
        if size > self.limits.max_record_bytes:
            self._count_drop(group[0].priority, "too_large", size)
            log.warning("record of %d bytes refused (max %d)", size, self.limits.max_record_bytes)
            return False
        with self._cond:
            self._pending.append(group)
            self._pending_bytes += size
            self._offered += 1
            while self._pending_bytes > self.limits.max_pending_bytes:
                if not self._shed_one():
                    break
            if not self._pending or self._pending[-1] is not group:
                return False  # the new group itself was the least important thing queued
            if any(o.priority == Priority.CRITICAL for o in group):
                self._urgent = True
            self._cond.notify_all()
        return True

    def _shed_one(self) -> bool:
        """Drop the least important queued record (newest first among equals); False if nothing can go."""
        worst: tuple[int, int, int] | None = None  # (priority, group index, item index)
        for gi, group in enumerate(self._pending):
            for ii, item in enumerate(group):
                key = (int(item.priority), gi, ii)
                if worst is None or key > worst:
                    worst = key
        if worst is None:
            return False
        _, gi, ii = worst
        group = self._pending[gi]
        removed = group[ii:] if ii > 0 else group  # a primary takes its companions with it
        for item in removed:
            self._pending_bytes -= item.approx_size
            self._count_drop(item.priority, "queue_full", item.approx_size)
        if ii > 0:
            del group[ii:]
        else:
            del self._pending[gi]
            self._settled += 1
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything queued so far (and pending acks); True when done within `timeout`."""
        with self._cond:
            target = self._offered
            generation = self._generation + 1
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: (self._settled >= target and self._generation >= generation) or self._thread is None,
                timeout,
            )

    def put_meta(self, key: str, value: str) -> None:
        """Persist a small piece of another stage's state with the next commit (no write of its own)."""
        with self._cond:
            self._meta_pending[key] = value
            self._cond.notify_all()

    def get_meta(self, key: str) -> str | None:
        with self._cond:
            if key in self._meta_pending:
                return self._meta_pending[key]
        with self._lock:
            assert self._db is not None
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"x.{key}",)).fetchone()
        return row[0] if row else None

    def wait_drained(self, timeout: float) -> bool:
        """Wait until nothing is queued, spooled or awaiting deletion (everything was delivered)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending and not self._acks and not any(self._counts.values()), timeout
            )

    # -- publisher side ---------------------------------------------------------------------------
    def ack(self, rowids: Iterable[int]) -> None:
        """The broker acknowledged these records: delete them at the next commit."""
        with self._cond:
            rowids = list(rowids)
            self._acks.update(rowids)
            self._acks_unmarked.extend(rowids)
            self._cond.notify_all()

    def drop(self, rowid: int, reason: str) -> None:
        """Remove a record that can never be delivered (e.g. the broker refuses it), counting the drop."""
        with self._cond:
            self._drops_pending.add((rowid, reason))
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

        Within a priority class, records accepted since `live_since` (spool uptime) go before the
        backlog, but every 1/backlog_share-th record is taken from the backlog so it keeps draining.
        Records in `exclude` (in flight) or already acknowledged are skipped.
        """
        if self._db is None or limit <= 0:
            return []
        with self._cond:
            skip = set(exclude) | {rowid for rowid, _ in self._drops_pending}
        boundary = self._rowid_since(live_since) if live_since is not None else None
        chosen: list[Record] = []
        with self._lock:
            # taken under _lock, so a commit deleting these rows cannot slip between taking and hiding them
            with self._cond:
                unmarked, self._acks_unmarked = self._acks_unmarked, []
            if unmarked:  # acknowledged rows stay hidden until the commit that deletes them
                self._db.executemany("INSERT OR IGNORE INTO temp.skip VALUES (?)", [(r,) for r in unmarked])
            for prio in Priority:
                if prio > max_priority or len(chosen) >= limit:
                    break
                if self._counts[prio] == 0:
                    continue
                need = limit - len(chosen)
                if boundary is None:
                    chosen += self._select(prio, 0, None, skip, need)
                    continue
                live = self._select(prio, boundary, None, skip, need)
                back = self._select(prio, 0, boundary, skip, need)
                every = max(1, round(1 / backlog_share)) if backlog_share > 0 else 0
                picked = 0
                while (live or back) and len(chosen) < limit:
                    picked += 1
                    take_backlog = not live or (back and every and picked % every == 0)
                    chosen.append(back.pop(0) if take_backlog else live.pop(0))
        return chosen[:limit]

    def _rowid_since(self, uptime: float) -> int:
        """The first rowid accepted at or after `uptime` (spool uptime), from the commit marks kept in
        memory; records older than this run's first commit all count as backlog."""
        with self._cond:
            index = bisect.bisect_left(self._mark_uptimes, uptime)
            if index < len(self._mark_rowids):
                return self._mark_rowids[index]
            return self._next_rowid_hint

    def _select(self, prio: Priority, lo: int, hi: int | None, skip: set[int], limit: int) -> list[Record]:
        assert self._db is not None
        sql = (
            "SELECT rowid, id, stream, seq, priority, topic, payload, retain, accepted_uptime FROM records "
            "WHERE priority=? AND rowid >= ? AND rowid NOT IN (SELECT rowid FROM temp.skip)"
        )
        args: list[Any] = [int(prio), lo]
        if hi is not None:
            sql += " AND rowid < ?"
            args.append(hi)
        fetch = limit
        if skip and len(skip) <= 900:
            sql += f" AND rowid NOT IN ({','.join('?' * len(skip))})"
            args.extend(skip)
        elif skip:
            fetch += len(skip)
        sql += " ORDER BY rowid LIMIT ?"
        args.append(fetch)
        rows = [
            Record(r[0], r[1], r[2], r[3], Priority(r[4]), r[5], bytes(r[6]), bool(r[7]), r[8])
            for r in self._db.execute(sql, args)
        ]
        return [r for r in rows if r.rowid not in skip][:limit]

    # -- committer ------------------------------------------------------------------------------
    def _run(self) -> None:
        last_housekeeping = 0.0
        failures = 0
        while True:
            with self._cond:
                self._wait_for_work()
                groups, self._pending, self._pending_bytes = self._pending, [], 0
                acks, self._acks = self._acks, set()
                drops, self._drops_pending = self._drops_pending, set()
                meta, self._meta_pending = self._meta_pending, {}
                self._urgent = False
                stopping = self._stop.is_set()
            records, leftover, error = self._commit(groups, acks, drops, meta)
            if error is None:
                failures = 0
                now = time.monotonic()
                if now - last_housekeeping > 30.0 or stopping:
                    try:
                        self._housekeeping()
                    except Exception:  # housekeeping must never stop commits
                        log.exception("spool housekeeping failed")
                    last_housekeeping = now
            else:
                failures += 1
                log.error("spool commit failed (%s); %d group(s) kept for the next try", error, len(leftover))
                with self._cond:  # keep what was not committed, in front of anything newer
                    self._pending[:0] = leftover
                    self._pending_bytes += sum(o.approx_size for g in leftover for o in g)
                    if not records:
                        self._acks |= acks
                        self._drops_pending |= drops
                        self._meta_pending = {**meta, **self._meta_pending}
            with self._cond:
                self._settled += len(groups) - len(leftover)
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
                    idle = not (self._pending or self._acks or self._drops_pending or self._meta_pending)
                if idle or failures >= 3:
                    if not idle:
                        log.error("spool stopping with %d uncommitted group(s)", len(self._pending))
                    return
            if error is not None:
                self._stop.wait(0.2 if stopping else 1.0)

    def _wait_for_work(self) -> None:
        """Group commits: once something is queued, wait out the commit interval (critical records and
        flush() cut it short); when idle, wake every second for housekeeping."""
        first_seen: float | None = None
        while not self._stop.is_set() and not self._urgent:
            busy = bool(self._pending or self._acks or self._drops_pending or self._meta_pending)
            now = time.monotonic()
            if not busy:
                if first_seen is None and not self._cond.wait(1.0):
                    return
                first_seen = None
                continue
            first_seen = first_seen if first_seen is not None else now
            remaining = first_seen + self.limits.commit_interval_s - now
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _commit(
        self,
        groups: list[list[Outgoing]],
        acks: set[int],
        drops: set[tuple[int, str]],
        meta: dict[str, str] | None = None,
    ) -> tuple[list[Record], list[list[Outgoing]], Exception | None]:
        """Write queued groups in transactions of at most `_batch_limit` bytes (the WAL stays small).

        Returns the committed records, the groups not committed (when a transaction failed), and
        the error; committed transactions are never repeated, so a failure cannot duplicate events.
        """
        committed: list[Record] = []
        chunks: list[list[list[Outgoing]]] = []
        chunk: list[list[Outgoing]] = []
        chunk_bytes = 0
        for group in groups:
            size = sum(disk_cost(o.approx_size) for o in group)
            if chunk and chunk_bytes + size > self._batch_limit:
                chunks.append(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(group)
            chunk_bytes += size
        if chunk or acks or drops or meta:
            chunks.append(chunk)
        for index, part in enumerate(chunks):
            try:
                first = index == 0
                committed += self._commit_chunk(
                    part, acks if first else set(), drops if first else set(), (meta or {}) if first else {}
                )
            except Exception as exc:  # sqlite errors, and anything unforeseen: keep the thread alive
                leftover = [g for later in chunks[index:] for g in later]
                return committed, leftover, exc
        return committed, [], None

    def _commit_chunk(
        self, groups: list[list[Outgoing]], acks: set[int], drops: set[tuple[int, str]], meta: dict[str, str]
    ) -> list[Record]:
        committed: list[Record] = []
        uptime = self.uptime()
        wall = self._wall()
        trusted = bool(self._clock_trusted())
        with self._lock:
            db = self._db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                if acks:
                    self._delete_rows(sorted(acks), reason=None)
                    db.executemany("DELETE FROM temp.skip WHERE rowid=?", [(r,) for r in acks])
                    with self._cond:  # gone now: no need to hide them any more
                        self._acks_unmarked = [r for r in self._acks_unmarked if r not in acks]
                for rowid, reason in drops:
                    self._delete_rows([rowid], reason=reason)
                for key, value in meta.items():
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"x.{key}", value))
                for group in groups:
                    group_id = new_id()
                    for index, item in enumerate(group):
                        committed.append(self._insert(item, group_id, index, uptime, wall, trusted))
                if committed:
                    self._mark(uptime, committed[0].rowid, committed[-1].rowid + 1)
                # insert first, then evict in EVICTION_ORDER: a new thumbnail never displaces a critical record
                evicted = self._enforce_budget() if committed else set()
                self._save_drops()
                self._save_uptime()
                db.execute("COMMIT")
                self.commits += 1
            except BaseException:
                db.execute("ROLLBACK")
                self._recount()
                self._restore_drops()
                raise
        self._drops_saving = {}
        # a record evicted in its own commit (the spool is full of higher priorities) was never accepted
        return [r for r in committed if r.rowid not in evicted]

    def _insert(
        self, item: Outgoing, group_id: str, index: int, uptime: float, wall: float, trusted: bool
    ) -> Record:
        assert self._db is not None
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
        cost = disk_cost(len(payload))
        cur = self._db.execute(
            "INSERT INTO records (id, stream, seq, priority, topic, payload, size, cost, retain, "
            "accepted_uptime, accepted_wall, wall_trusted) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                record_id,
                item.stream,
                seq,
                int(item.priority),
                topic,
                payload,
                len(payload),
                cost,
                int(item.retain),
                uptime,
                wall,
                int(trusted),
            ),
        )
        self._counts[item.priority] += 1
        self._bytes_by[item.priority] += cost
        self._bytes += cost
        self.bytes_written += len(payload)
        return Record(
            int(cur.lastrowid or 0),
            record_id,
            item.stream,
            seq,
            item.priority,
            topic,
            payload,
            item.retain,
            uptime,
            body,
        )

    def _mark(self, uptime: float, first_rowid: int, next_rowid: int) -> None:
        with self._cond:
            self._mark_uptimes.append(uptime)
            self._mark_rowids.append(first_rowid)
            self._next_rowid_hint = next_rowid
            if len(self._mark_uptimes) > 200_000:  # keep memory bounded; older records are backlog anyway
                del self._mark_uptimes[:100_000]
                del self._mark_rowids[:100_000]

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
                f"SELECT priority, COUNT(*), SUM(size), SUM(cost) FROM records WHERE rowid IN ({marks}) "
                "GROUP BY priority",
                chunk,
            ).fetchall()
            self._db.execute(f"DELETE FROM records WHERE rowid IN ({marks})", chunk)
            for prio, count, size, cost in rows:
                p = Priority(prio)
                self._counts[p] -= count
                self._bytes_by[p] -= cost
                self._bytes -= cost
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
        """Write the counted drops inside the current transaction (kept until it commits)."""
        assert self._db is not None
        with self._cond:
            unsaved, self._drops_unsaved = self._drops_unsaved, {}
            for key, (count, size) in unsaved.items():
                entry = self._drops_saving.setdefault(key, [0, 0])
                entry[0] += count
                entry[1] += size
        for (prio, reason), (count, size) in unsaved.items():
            self._db.execute(
                "INSERT INTO drops VALUES (?,?,?,?) ON CONFLICT(priority, reason) DO UPDATE SET "
                "count=count+excluded.count, bytes=bytes+excluded.bytes",
                (int(prio), reason, count, size),
            )

    def _restore_drops(self) -> None:
        """A transaction rolled back: its drop counts go back to the unsaved pile."""
        with self._cond:
            for key, (count, size) in self._drops_saving.items():
                entry = self._drops_unsaved.setdefault(key, [0, 0])
                entry[0] += count
                entry[1] += size
            self._drops_saving = {}

    # -- bounds ---------------------------------------------------------------------------------
    def _allowed_bytes(self) -> int:
        """Bytes of records (by disk_cost) we may hold.

        The budget covers the database file, its WAL and the shared-memory file. New records
        reuse pages freed by old ones, so the file stops growing once it holds the allowed records,
        the b-tree pages around them (measured) and one transaction's worth of freed pages; the WAL
        holds at most one transaction (`_batch_limit` of records plus the pages its evictions
        touch). The free-space floor counts freed pages inside the file as available.
        """
        assert self._db is not None
        wal = 3 * self._batch_limit + 32 * 1024  # WAL during a transaction, plus the -shm file
        try:
            (free_pages,) = self._db.execute("PRAGMA freelist_count").fetchone()
            free_bytes = free_pages * PAGE_SIZE
            structure = max(0, os.stat(self.path).st_size - free_bytes - self._bytes)
            allowed = int(self.limits.budget_bytes * 0.93) - wal - structure - self._batch_limit
            st = os.statvfs(self.path.parent)
            fs_room = st.f_bavail * st.f_frsize - self.limits.free_floor_bytes
            allowed = min(allowed, self._bytes + free_bytes + fs_room - wal)
        except (OSError, sqlite3.Error):
            allowed = int(self.limits.budget_bytes * 0.7)
        return max(0, allowed)

    def _enforce_budget(self) -> set[int]:
        """Evict in EVICTION_ORDER, oldest first, until within bounds; returns the evicted rowids."""
        allowed = self._allowed_bytes()
        evicted: set[int] = set()
        for prio in EVICTION_ORDER:
            while self._bytes > allowed and self._counts[prio] > 0:
                assert self._db is not None
                rows = self._db.execute(
                    "SELECT rowid, cost FROM records WHERE priority=? ORDER BY rowid LIMIT 256", (int(prio),)
                ).fetchall()
                if not rows:
                    break
                victims = []
                excess = self._bytes - allowed
                for rowid, cost in rows:
                    if excess <= 0:
                        break
                    victims.append(rowid)
                    excess -= cost
                self._delete_rows(victims, reason="budget")
                evicted.update(victims)
        return evicted

    def expire_now(self) -> None:
        """Run TTL expiry immediately (it otherwise runs every 30 s on the committer thread)."""
        self.flush()
        self._housekeeping()

    def _housekeeping(self) -> None:
        """Expire records past their TTL and give freed pages back to the filesystem."""
        with self._lock:
            if self._db is None:
                return
            now_uptime = self.uptime()
            now_wall = self._wall()
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
            self._housekeeping_runs += 1
            # keep the persisted uptime fresh even when idle, but write at most every ~5 minutes
            if expired or self._drops_unsaved or self._housekeeping_runs % 10 == 0:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._delete_rows(expired, reason="ttl")
                    self._save_drops()
                    self._save_uptime()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    self._recount()
                    self._restore_drops()
                    raise
                self._drops_saving = {}
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
        """Depth, bytes, oldest record and drops per class, from in-memory counters and indexed lookups
        (status pages and telemetry call this often; it must not scan the table)."""
        now = self.uptime()
        with self._cond:
            unsaved = {k: list(v) for k, v in self._drops_unsaved.items()}
            for key, (count, size) in self._drops_saving.items():
                entry = unsaved.setdefault(key, [0, 0])
                entry[0] += count
                entry[1] += size
        classes: dict[str, Any] = {}
        with self._lock:
            assert self._db is not None
            for prio in Priority:
                oldest = self._db.execute(
                    "SELECT accepted_uptime, accepted_wall FROM records WHERE priority=? ORDER BY rowid LIMIT 1",
                    (int(prio),),
                ).fetchone()
                classes[prio.label] = {
                    "depth": self._counts[prio],
                    "bytes": self._bytes_by[prio],
                    "oldest_age_s": round(max(0.0, now - oldest[0]), 1) if oldest else None,
                    "oldest_accepted_wall": oldest[1] if oldest else None,
                    "drops": _drops(self._db, prio, unsaved),
                }
            counters = dict(self._db.execute("SELECT stream, seq FROM counters"))
        return {
            "path": str(self.path),
            "depth": sum(self._counts.values()),
            "bytes": self._bytes,
            "disk_bytes": self.disk_bytes(),
            "budget_bytes": self.limits.budget_bytes,
            "classes": classes,
            "seq": counters,
            "uptime_s": round(now, 1),
            "recovered_from": str(self.recovered_from) if self.recovered_from else None,
            "set_aside": self.set_aside(),
        }

    def set_aside(self) -> list[dict[str, Any]]:
        """Damaged spools moved aside (kept for forensics, never deleted by the agent)."""
        found = []
        for path in sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*")):
            if path.name.endswith(("-wal", "-shm")):
                continue
            with contextlib.suppress(OSError):
                found.append({"name": path.name, "bytes": path.stat().st_size})
        return found

    @staticmethod
    def read_stats(path: Path) -> dict[str, Any]:
        """Stats of a spool file another process may be using (read-only; for `agent spool stats`)."""
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = db.execute("SELECT value FROM meta WHERE key='uptime'").fetchone()
            stats = _stats(db, float(row[0]) if row else 0.0)
            (size,) = db.execute("SELECT COALESCE(SUM(cost), 0) FROM records").fetchone()
        finally:
            db.close()
        disk = sum(
            os.stat(str(path) + sfx).st_size
            for sfx in ("", "-wal", "-shm")
            if os.path.exists(str(path) + sfx)
        )
        stats.update(path=str(path), bytes=int(size), disk_bytes=disk)
        return stats


def _drops(
    db: sqlite3.Connection, prio: Priority, unsaved: dict[tuple[Priority, str], list[int]]
) -> dict[str, dict[str, int]]:
    drops = {
        reason: {"count": c, "bytes": b}
        for reason, c, b in db.execute(
            "SELECT reason, count, bytes FROM drops WHERE priority=?", (int(prio),)
        )
    }
    for (p, reason), (c, b) in unsaved.items():
        if p == prio:
            cur = drops.setdefault(reason, {"count": 0, "bytes": 0})
            cur["count"] += c
            cur["bytes"] += b
    return drops


def _stats(db: sqlite3.Connection, now: float) -> dict[str, Any]:
    """Stats straight from the file (another process's spool): aggregates are fine for a CLI."""
    per = {}
    for prio in Priority:
        row = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost), 0), MIN(accepted_uptime), MIN(accepted_wall) "
            "FROM records WHERE priority=?",
            (int(prio),),
        ).fetchone()
        per[prio.label] = {
            "depth": row[0],
            "bytes": row[1],
            "oldest_age_s": round(max(0.0, now - row[2]), 1) if row[2] is not None else None,
            "oldest_accepted_wall": row[3],
            "drops": _drops(db, prio, {}),
        }
    return {
        "depth": sum(v["depth"] for v in per.values()),
        "classes": per,
        "seq": dict(db.execute("SELECT stream, seq FROM counters")),
        "uptime_s": round(now, 1),
    }
