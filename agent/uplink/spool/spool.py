"""The durable outbox: every record that leaves the node is committed here first.

A record is *accepted* when the commit holding it is on disk (one write and one `fdatasync` of a
segment log, see segments.py), and only then does it get its `id` and per-stream `seq` (in that same
commit, so a crash can never leave a gap). Producers never wait for the disk: `accept()` queues in
memory and the `spool-commit` thread groups commits (default every 200 ms) to spare the SD card.
Records leave only when the publisher acknowledges them (after the broker's PUBACK for that very
record); the acknowledgement is written with the next commit.

The spool is bounded by a byte budget and a free-space floor: it evicts telemetry first, then
thumbnails, then the oldest event metadata; critical records go last. Every drop is counted per
class. Ages for TTLs are measured in *spool uptime* (time the spool was open, summed over runs, on
the injected monotonic clock), raised to the wall-clock age only when the wall clock was trusted
both when the record was accepted and now.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.lifecycle import BackgroundLoop, deadline_in
from agent.uplink.spool.intake import Intake
from agent.uplink.spool.policy import SpoolLimits
from agent.uplink.spool.records import Outgoing, Priority, Record
from agent.uplink.spool.segments import read_only_groups
from agent.uplink.spool.state import replay
from agent.uplink.spool.stats import describe, set_aside_files
from agent.uplink.spool.store import SpoolStore, UptimeClock

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 30.0  # TTL expiry, retiring and compacting segments, the free-space floor
MARKS_KEPT = 100_000
# Acknowledgements cost a write of their own only after this long (or this many); until then they
# ride with the next commit of records. A power cut meanwhile only means those records are sent
# once more (same ids), which at-least-once delivery allows anyway.
DEFERRED_S = 10.0
DEFERRED_MAX = 4096


class Spool:
    """Durable, bounded, prioritised outbox in one directory; a lifecycle object with start/stop."""

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
        self._clock = UptimeClock(monotonic)  # spool uptime and TTL ages; tests jump it
        self._store = SpoolStore(
            path, self.limits, uptime=self._clock, wall=wall, clock_trusted=clock_trusted
        )
        lock = threading.RLock()  # the intake and everything below it
        self._cond = threading.Condition(lock)  # wakes the committer (and flush(), after a commit)
        # wakes wait_drained() only: acknowledgements arrive in thousands per second while a backlog
        # drains, and waking the committer for each (it has nothing to do with them) costs the uplink
        # thread the GIL every time (bench/uplink.py)
        self._settled = threading.Condition(lock)
        self._intake = Intake(
            self._store.state.tally,
            max_pending_bytes=self.limits.max_pending_bytes,
            max_record_bytes=self.limits.max_record_bytes,
        )
        self._acks: set[int] = set()  # acknowledged, deleted with the next commit
        self._meta: dict[str, str] = {}  # put_meta, written with the next commit
        self._deferred_since: float | None = None  # when acknowledgements started waiting for a commit
        self._urgent = False
        self._generation = 0  # commit passes so far; flush() waits for the next one
        self._loop = BackgroundLoop("spool-commit", self._run)
        self._stop = self._loop.stopping
        self._listeners: list[Callable[[list[Record]], None]] = []
        self._ack_listeners: list[Callable[[list[int]], None]] = []
        self._mark_uptimes: list[float] = []  # per commit: its uptime and first rowid (live vs backlog)
        self._mark_rowids: list[int] = []
        self._last_housekeeping = 0.0
        self.bytes_accepted = 0  # payload bytes committed this run (what the spool carries)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Spool:
        self._store.open()
        self._intake.tally = self._store.state.tally
        self._last_housekeeping = self.uptime()
        self._loop.start()
        return self

    def stop(self, deadline: float | None = None) -> None:
        """Commit what was accepted and close the files by `deadline` (default: 5 s from now)."""
        if not self._loop.started:
            return
        deadline = deadline_in(5.0) if deadline is None else deadline
        self._loop.request_stop()
        with self._cond:
            self._cond.notify_all()
            self._settled.notify_all()
        if not self._loop.join(deadline):
            log.error("spool committer did not stop by the deadline; leaving the files open")
            return
        self._store.close()

    def status(self) -> dict[str, Any]:
        """Cheap liveness (stats() reads the store): is the committer running, how many passes, and
        how many records the publisher got from memory rather than reading them back from disk."""
        recent = self._store.recent
        return {
            "committer": self._loop.alive(),
            "generation": self._generation,
            "read_back": {"from_memory": recent.hits, "from_disk": recent.misses, "kept_bytes": recent.bytes},
        }

    def __enter__(self) -> Spool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def recovered_from(self) -> Path | None:
        """Where a damaged spool (or segment) was moved aside at start, if one was."""
        return self._store.recovered_from

    @property
    def generation(self) -> int:
        """Counts commit passes: what was read before a change of it may be out of date."""
        return self._generation

    # -- time -----------------------------------------------------------------------------------
    def uptime(self) -> float:
        """Seconds the spool has been open, summed over all runs (a monotonic clock that survives reboots)."""
        return self._clock()

    # -- producer side ----------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[list[Record]], None]) -> None:
        """Called from the committer thread with the records of each commit; must be quick."""
        self._listeners.append(fn)

    def add_ack_listener(self, fn: Callable[[list[int]], None]) -> None:
        """Called with the rowids of records the broker acknowledged (delivered, not dropped), on the
        thread that acknowledges them; must be quick (e.g. the audit log learns its head was published)."""
        self._ack_listeners.append(fn)

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
        with self._cond:
            if self._intake.refuse(group):
                return False
            if not self._intake.offer(group):
                return False
            if any(o.priority == Priority.CRITICAL for o in group):
                self._urgent = True
            self._cond.notify_all()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Commit everything queued so far (and pending acks); True when done within `timeout`."""
        with self._cond:
            target = self._intake.offered
            generation = self._generation + 1
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: (
                    (self._intake.settled >= target and self._generation >= generation)
                    or not self._loop.alive()
                ),
                timeout,
            )

    def put_meta(self, key: str, value: str) -> None:
        """Persist a small piece of another stage's state with the next commit (no write of its own)."""
        with self._cond:
            self._meta[key] = value
            self._cond.notify_all()

    def get_meta(self, key: str) -> str | None:
        with self._cond:
            if key in self._meta:
                return self._meta[key]
        with self._store.lock:
            return self._store.state.meta.get(key)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until everything accepted has been delivered (or dropped, counted): nothing queued,
        nothing waiting. Deleting what was delivered may still be on its way to the disk."""

        def drained() -> bool:
            with self._store.lock:  # never taken the other way round: no deadlock
                return not self._intake.groups and not self._store.index.entries

        with self._settled:
            return self._settled.wait_for(drained, timeout)

    # -- publisher side ---------------------------------------------------------------------------
    def ack(self, rowids: Iterable[int]) -> None:
        """The broker acknowledged these records: they stop waiting now, and their deletion is
        written with the next commit."""
        gone = self._store.leave(list(rowids))
        with self._cond:
            self._acks.update(gone)  # the committer picks them up when it next wakes (_wait_for_work)
            self._settled.notify_all()
        if gone:
            for listener in self._ack_listeners:
                listener(gone)

    def drop(self, rowid: int, reason: str) -> None:
        """Remove a record that can never be delivered (e.g. the broker refuses it), counting the drop."""
        if self._store.leave([rowid], reason):
            with self._cond:
                self._cond.notify_all()  # the drop count is written with the next commit
                self._settled.notify_all()

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
        if limit <= 0:
            return []
        with self._cond:
            skip = set(exclude)
            boundary = self._rowid_since(live_since) if live_since is not None else None
        with self._store.lock:
            chosen = self._store.index.select(
                limit, skip=skip, boundary=boundary, backlog_share=backlog_share, max_priority=max_priority
            )
            records, damaged = self._store.read(chosen)
        for rowid in damaged:
            self.drop(rowid, "damaged")
        return records

    def _rowid_since(self, uptime: float) -> int:
        """The first rowid accepted at or after `uptime`, from the commit marks kept in memory;
        records from before this run's first commit all count as backlog. Call under _cond."""
        index = bisect.bisect_left(self._mark_uptimes, uptime)
        if index < len(self._mark_rowids):
            return self._mark_rowids[index]
        return self._store.state.next_rowid

    # -- the committer ------------------------------------------------------------------------------
    def _run(self, _loop: BackgroundLoop) -> None:
        failures = 0
        while True:
            with self._cond:
                self._wait_for_work()
                stopping = self._stop.is_set()
                groups = self._intake.take()
                acks: set[int] = set()
                meta: dict[str, str] = {}
                if groups or self._urgent or stopping or self._deferred_due() or self._drops_pending():
                    # acknowledgements and metadata ride along with records; alone, they wait a while
                    acks, self._acks = self._acks, set()
                    meta, self._meta = self._meta, {}
                    self._deferred_since = None
                self._urgent = False
            committed: list[Record] = []
            try:
                committed = self._store.commit(groups, acks, meta)
                failures = 0
                settled = len(groups)
            except OSError as exc:
                failures += 1
                settled = 0
                log.error("spool commit failed (%s); %d group(s) kept for the next try", exc, len(groups))
                with self._cond:  # keep what was not committed, in front of anything newer
                    self._intake.put_back(groups)
                    self._acks |= acks
                    self._meta = {**meta, **self._meta}
            if failures == 0 and (stopping or self.uptime() - self._last_housekeeping >= HOUSEKEEPING_S):
                try:
                    self._last_housekeeping = self.uptime()
                    self._store.housekeeping()
                except Exception:  # housekeeping must never stop commits
                    log.exception("spool housekeeping failed")
            with self._cond:
                self._intake.settled += settled
                self._generation += 1
                self._cond.notify_all()
                self._settled.notify_all()
            if committed:
                self._mark(committed)
                for listener in self._listeners:
                    try:
                        listener(committed)
                    except Exception:
                        log.exception("spool listener %r failed", listener)
            if stopping:
                with self._cond:
                    idle = not (self._intake.groups or self._acks or self._meta or self._drops_pending())
                if idle or failures >= 3:
                    if not idle:
                        log.error("spool stopping with %d uncommitted group(s)", len(self._intake.groups))
                    return
            if failures:
                self._stop.wait(0.2 if stopping else 1.0)

    def _wait_for_work(self) -> None:
        """Group commits: once records are queued, wait one commit interval more for company
        (critical records and flush() cut it short). Acknowledgements and metadata alone are not
        worth a write of their own on an SD card: they wait for the next records, or DEFERRED_S."""
        if not (self._stop.is_set() or self._urgent or self._records_pending()):
            timeout = 1.0  # idle: wake every second for housekeeping
            if (self._acks or self._meta) and self._deferred_since is None:
                self._deferred_since = self.uptime()
            if self._deferred_since is not None:
                timeout = min(timeout, max(0.0, self._deferred_since + DEFERRED_S - self.uptime()))
            self._cond.wait_for(
                lambda: self._stop.is_set() or self._urgent or self._records_pending(), timeout
            )
        if self._records_pending() and not (self._stop.is_set() or self._urgent):
            self._cond.wait_for(lambda: self._stop.is_set() or self._urgent, self.limits.commit_interval_s)

    def _records_pending(self) -> bool:
        return bool(self._intake.groups or self._drops_pending())

    def _drops_pending(self) -> bool:
        return self._store.state.tally.has_unsaved()

    def _deferred_due(self) -> bool:
        return bool(self._acks or self._meta) and (
            len(self._acks) >= DEFERRED_MAX
            or (self._deferred_since is not None and self.uptime() - self._deferred_since >= DEFERRED_S)
        )

    def _mark(self, committed: list[Record]) -> None:
        self.bytes_accepted += sum(len(r.payload) for r in committed)
        with self._cond:
            self._mark_uptimes.append(committed[0].accepted_uptime)
            self._mark_rowids.append(committed[0].rowid)
            if len(self._mark_uptimes) > 2 * MARKS_KEPT:  # memory stays bounded; older ones are backlog
                del self._mark_uptimes[:MARKS_KEPT], self._mark_rowids[:MARKS_KEPT]

    def expire_now(self) -> None:
        """Run TTL expiry and the budget now (it otherwise runs every 30 s on the committer thread)."""
        self.flush()
        self._store.housekeeping()

    # -- reporting ------------------------------------------------------------------------------
    @property
    def bytes_written(self) -> int:
        """Bytes this spool appended to its files in this run (SD-card wear accounting)."""
        return self._store.bytes_written

    @property
    def commits(self) -> int:
        return self._store.commits

    def disk_bytes(self) -> int:
        with self._store.lock:
            return self._store.disk_bytes()

    def seq(self, stream: str) -> int:
        with self._store.lock:
            return self._store.state.seq.get(stream, 0)

    def stats(self) -> dict[str, Any]:
        """Depth, bytes, oldest record and drops per class, from memory (status pages and telemetry
        call this often)."""
        store = self._store
        with store.lock:
            return describe(
                path=self.path,
                index=store.index,
                tally=store.state.tally,
                seq=store.state.seq,
                uptime=self.uptime(),
                disk_bytes=store.disk_bytes(),
                budget_bytes=self.limits.budget_bytes,
                recovered_from=self.recovered_from,
                set_aside=set_aside_files(self.path),
            )

    def set_aside(self) -> list[dict[str, Any]]:
        """Damaged segments moved aside (kept for forensics, never deleted by the agent)."""
        return set_aside_files(self.path)

    @staticmethod
    def read_stats(path: Path) -> dict[str, Any]:
        """Stats of a spool another process may be using (read-only; for `agent spool stats`)."""
        if not path.is_dir():
            raise FileNotFoundError(f"no spool at {path}")
        groups = read_only_groups(path)
        state = replay(groups)
        disk = sum(p.stat().st_size for p in path.glob("seg-*.log"))
        return describe(
            path=path,
            index=state.index,
            tally=state.tally,
            seq=state.seq,
            uptime=state.uptime,
            disk_bytes=disk,
            budget_bytes=None,
            set_aside=set_aside_files(path),
        )
