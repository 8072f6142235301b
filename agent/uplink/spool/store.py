"""The spool's store: its files, its state and every change to them, in one place and with no
threads of its own (the Spool facade runs the commit thread).

Reading goes on while a commit is being written: a commit is planned under `lock` (which readers
share), written and synced under `writer` alone, then applied to the index under `lock` again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from agent.ids import new_id
from agent.uplink.spool import codec, migrate, policy
from agent.uplink.spool.index import Live, LiveIndex
from agent.uplink.spool.policy import SpoolLimits
from agent.uplink.spool.recent import RecentRecords
from agent.uplink.spool.records import Outgoing, Priority, Record, encode_json
from agent.uplink.spool.segments import SegmentLog
from agent.uplink.spool.state import SpoolState, replay

log = logging.getLogger(__name__)

IDLE_CLOCK_S = 300.0  # when idle, write the uptime at most this often (it ages what waits)
# Records read back in one `pread` when what lies between them is no larger than this: the events
# a publisher picks are interleaved with their thumbnails on disk, and one read across a thumbnail is
# cheaper than a system call (and a GIL hand-over) per event
READ_GAP_BYTES = 32 * 1024


class UptimeClock:
    """Spool uptime: seconds the spool has been open, summed over runs, on an injected monotonic clock
    (a monotonic clock that survives reboots; TTL ages use it, so a wall clock jumping from 1970 to
    today does not age anything)."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._mono = monotonic
        self._base = 0.0
        self._opened = monotonic()

    def start(self, base: float) -> None:
        self._base, self._opened = base, self._mono()

    def __call__(self) -> float:
        return self._base + (self._mono() - self._opened)


class SpoolStore:
    def __init__(
        self,
        path: Path,
        limits: SpoolLimits,
        *,
        uptime: UptimeClock,
        wall: Callable[[], float],
        clock_trusted: Callable[[], bool],
    ) -> None:
        self.path = path
        self.limits = limits
        self.uptime = uptime
        self._wall = wall
        self._clock_trusted = clock_trusted
        self._log = SegmentLog(path, segment_bytes=limits.segment_bytes)
        self.state = SpoolState()
        self.lock = threading.RLock()  # the index and the state; readers take it too
        self.writer = threading.Lock()  # one appender at a time (commits, housekeeping, closing)
        self.recovered_from: Path | None = None
        self.commits = 0
        self._last_clock_write = 0.0
        self.recent = RecentRecords()  # what was just committed, so the publisher need not read it back

    @property
    def index(self) -> LiveIndex:
        return self.state.index

    @property
    def bytes_written(self) -> int:
        """Bytes appended to the files in this run (SD-card wear accounting)."""
        return self._log.bytes_written

    def disk_bytes(self) -> int:
        return self._log.disk_bytes()

    # -- opening and closing ------------------------------------------------------------------------
    def open(self) -> None:
        """Read the segments back, start the uptime clock where it stopped, take in what an older
        spool or a damaged segment still holds, and make sure there is an active segment."""
        opened = self._log.open()
        self.recent.clear()
        self.state = replay(opened.groups)
        if self.state.created_wall is None:
            self.state.created_wall = self._wall()
        if opened.torn_bytes:
            log.warning(
                "spool: %d bytes of an unfinished commit were cut off (a power cut)", opened.torn_bytes
            )
        for problem in opened.damage:
            log.error("spool: %s", problem)
        legacy = migrate.legacy_path(self.path)
        old = migrate.read_legacy(legacy) if legacy.is_file() and legacy != self.path else None
        carried = self._salvage(opened.set_aside)
        if old is not None:
            carried += self._adopt_legacy(old)
        self.uptime.start(max(self.state.uptime, old.uptime if old is not None else 0.0))
        self._last_clock_write = self.uptime()
        if self._log.needs_new_segment() or old is not None:
            self._rotate()  # a new segment's snapshot also carries what came over from the old spool
        if carried:
            self._append_records(carried)
        if old is not None and old.set_aside is None:
            migrate.remove_legacy(legacy)
        aside = opened.set_aside[:1] or ([old.set_aside] if old and old.set_aside else [])
        self.recovered_from = aside[0] if aside else None

    def close(self) -> None:
        with self.writer, self.lock:
            with contextlib.suppress(OSError):
                self._write_group([])  # the uptime, for the ages of what still waits
            self._log.close()

    def _salvage(self, set_aside: list[Path]) -> list[bytes]:
        """Entries of records still waiting in segments that were set aside as damaged."""
        if not set_aside:
            return []
        data = {int(path.name.split("-")[1].split(".")[0]): path.read_bytes() for path in set_aside}
        entries: list[bytes] = []
        index = self.state.index
        for live in sorted(index.entries.values(), key=lambda lv: lv.rowid):
            if live.segment in self._log.segments:
                continue
            index.remove(live.rowid)  # indexed again where the copy lands
            blob = data.get(live.segment)
            if blob is not None:
                entries.append(blob[live.offset : live.offset + live.length])
        if entries:
            log.warning("spool: %d waiting record(s) salvaged from damaged segments", len(entries))
        return entries

    def _adopt_legacy(self, old: migrate.LegacySpool) -> list[bytes]:
        """Counters, metadata, drop counts and waiting records of an older agent's spool."""
        state = self.state
        for stream, seq in old.seq.items():
            state.seq[stream] = max(state.seq.get(stream, 0), seq)
        state.meta = {**old.meta, **state.meta}
        for priority, reason, count, size in old.drops:
            state.tally.add_totals(Priority(int(str(priority))), str(reason), int(str(count)), int(str(size)))
        if not old.records:
            return []
        state.next_rowid = max(state.next_rowid, old.records[-1][0] + 1)
        log.info(
            "spool: bringing %d waiting record(s) over from %s",
            len(old.records),
            migrate.legacy_path(self.path),
        )
        return [
            codec.encode_record(
                rowid=rowid,
                priority=priority,
                seq=seq,
                accepted_uptime=uptime,
                accepted_wall=wall,
                retain=retain,
                trusted=trusted,
                id=record_id,
                stream=stream,
                topic=topic,
                payload=payload,
            )
            for rowid, record_id, stream, seq, priority, topic, payload, retain, uptime, wall, trusted in old.records
        ]

    def _append_records(self, entries: list[bytes]) -> None:
        """Write whole RECORD entries (copied from elsewhere) to the active segment and index them
        there. Call with the writer lock held, or before the committer runs."""
        if self._log.needs_new_segment():
            self._rotate()
        target = self._log.active
        assert target is not None
        at, lives = target.size, []
        for raw in entries:
            fields, payload = codec.read_record(raw)
            lives.append(
                Live(
                    fields.rowid,
                    Priority(fields.priority),
                    fields.accepted_uptime,
                    fields.accepted_wall,
                    fields.trusted,
                    target.number,
                    at,
                    len(raw),
                    len(payload),
                )
            )
            at += len(raw)
        self._write_group(entries)
        with self.lock:
            for live in lives:
                self.state.index.add(live)

    # -- committing -------------------------------------------------------------------------------
    def leave(self, rowids: list[int], reason: str | None = None) -> list[int]:
        """Records that left: acknowledged (`reason` None) or dropped for `reason` (counted). They
        leave the index at once, so nothing picks them again; writing that down waits for the next
        commit (acknowledgements via `commit(acks=...)`, drops via the tally). Returns those that
        were still waiting."""
        gone = []
        with self.lock:
            self.recent.discard(rowids)
            for rowid in rowids:
                live = self.index.remove(rowid)
                if live is None:
                    continue
                gone.append(rowid)
                if reason is not None:
                    self.state.tally.add(live.priority, reason, live.size, rowid)
        return gone

    def commit(self, groups: list[list[Outgoing]], acks: set[int], meta: dict[str, str]) -> list[Record]:
        """Write one group: new records, acknowledgements, drops (with evictions), metadata, uptime;
        returns the records it accepted."""
        if not (groups or acks or meta or self.state.tally.has_unsaved()):
            return []
        with self.writer:
            return self._commit_locked(groups, acks, meta)

    def _commit_locked(
        self, groups: list[list[Outgoing]], acks: set[int], meta: dict[str, str]
    ) -> list[Record]:
        state, index = self.state, self.state.index
        with self.lock:
            if self._log.needs_new_segment():
                self._rotate()
            uptime, wall, trusted = self.uptime(), self._wall(), bool(self._clock_trusted())
            segment = self._log.active
            assert segment is not None
            chunks: list[bytes] = []
            at = segment.size
            records: list[Record] = []
            lives: list[Live] = []
            next_rowid, seqs = state.next_rowid, dict(state.seq)
            for group in groups:
                group_id = new_id()
                for position, item in enumerate(group):
                    record = self._make_record(item, group_id, position, next_rowid, seqs, uptime)
                    entry = codec.encode_record(
                        rowid=record.rowid,
                        priority=int(item.priority),
                        seq=record.seq,
                        accepted_uptime=uptime,
                        accepted_wall=wall,
                        retain=item.retain,
                        trusted=trusted,
                        id=record.id,
                        stream=item.stream,
                        topic=record.topic,
                        payload=record.payload,
                    )
                    lives.append(
                        Live(
                            record.rowid,
                            item.priority,
                            uptime,
                            wall,
                            trusted,
                            segment.number,
                            at,
                            len(entry),
                            len(record.payload),
                        )
                    )
                    records.append(record)
                    chunks.append(entry)
                    at += len(entry)
                    next_rowid += 1
            victims = self._evictions(lives)
            unsaved = state.tally.take_unsaved()
            drop_list = [codec.Dropped(v.rowid, int(v.priority), v.size, "budget") for v in victims]
            drop_list += [codec.Dropped(r, int(p), size, why) for r, p, size, why in unsaved]
            if acks:
                chunks.append(codec.encode_acks(acks))
            if drop_list:
                chunks.append(codec.encode_drops(drop_list))
            if meta:
                chunks.append(codec.encode_json(codec.META, meta))
        try:
            self._write_group(chunks, uptime)  # no lock held: readers go on during the fdatasync
        except OSError:
            state.tally.give_back(unsaved)
            raise
        with self.lock:
            for live in lives:
                index.add(live)
            for victim in victims:
                if index.remove(victim.rowid) is not None:  # not delivered meanwhile
                    state.tally.add(victim.priority, "budget", victim.size, saved=True)
            if victims:
                log.warning(
                    "spool over its budget: evicted %d record(s), oldest of the least important first",
                    len(victims),
                )
            state.next_rowid, state.seq = next_rowid, seqs
            state.meta.update(meta)
            self._retire_and_compact()
            evicted = {v.rowid for v in victims}
            committed = [r for r in records if r.rowid not in evicted]
            self.recent.add(committed)
        return committed

    @staticmethod
    def _make_record(
        item: Outgoing, group_id: str, position: int, rowid: int, seqs: dict[str, int], uptime: float
    ) -> Record:
        record_id = group_id if position == 0 or isinstance(item.body, bytes) else new_id()
        seq = None
        body = None
        if isinstance(item.body, bytes):
            payload = item.body
        else:
            body = dict(item.body)
            body["id"] = record_id
            if item.sequenced:
                seq = seqs[item.stream] = seqs.get(item.stream, 0) + 1
                body["seq"] = seq
            payload = encode_json(body)
        topic = item.topic.replace("{id}", group_id)
        return Record(
            rowid, record_id, item.stream, seq, item.priority, topic, payload, item.retain, uptime, body
        )

    def _evictions(self, lives: list[Live], dead: frozenset[int] = frozenset()) -> list[Live]:
        """Records to drop so that what waits fits: new records count, and compete like the rest
        (a new thumbnail never displaces a critical record); `dead` are leaving anyway."""
        index = self.state.index
        new_bytes = sum(lv.length for lv in lives)
        live = index.total_bytes + new_bytes - sum(index.entries[r].length for r in dead)
        allowed = policy.allowed_live_bytes(self.limits, live=live, fs_room=self._fs_room())
        if live <= allowed:
            return []
        return policy.eviction_victims(index, live - allowed, dead=dead, new=lives)

    def _fs_room(self) -> int | None:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize - self.limits.free_floor_bytes

    def _write_group(self, chunks: list[bytes], uptime: float | None = None) -> None:
        """Append one committed group: `chunks`, the uptime and a COMMIT entry, in one write and fdatasync."""
        uptime = self.uptime() if uptime is None else uptime
        self.state.commits += 1
        group = b"".join([*chunks, codec.encode_clock(uptime)])
        active = self._log.active
        assert active is not None  # every caller starts a segment first when there is none
        self._log.append([group, codec.encode_commit(self.state.commits, group, active.number)])
        self._last_clock_write = uptime
        self.state.uptime = max(self.state.uptime, uptime)
        self.commits += 1

    def _rotate(self) -> None:
        """A new active segment, opened by a snapshot of everything records do not carry."""
        state = self.state
        unsaved = state.tally.take_unsaved()  # included in the snapshot's totals
        state.uptime = max(state.uptime, self.uptime())
        state.commits += 1
        snapshot = codec.encode_json(codec.STATE, state.snapshot())
        try:
            self._log.start_segment(snapshot, state.commits)
        except OSError:
            state.tally.give_back(unsaved)
            raise

    def _retire_and_compact(self) -> None:
        """Retire the oldest segments once nothing in them waits (their files are reused or unlinked).
        Copy the records still waiting in the oldest segment forward (so it can go too) when it is
        mostly delivered, or when the spool is near its budget. Only ever the oldest: a segment's
        acknowledgements must not vanish while an older segment still holds the records they
        acknowledge. Call with the writer lock held."""
        index, segments, limits = self.state.index, self._log.segments, self.limits
        tight = limits.budget_bytes - 2 * limits.segment_bytes
        for _ in range(4 * (limits.budget_bytes // limits.segment_bytes)):  # bounded work per call
            if len(segments) < 2:
                return
            oldest = min(segments)
            live_bytes = index.segment_bytes.get(oldest, 0)
            if live_bytes:
                disk = self._log.disk_bytes()
                gain = segments[oldest].size - live_bytes
                worth = policy.compaction_due(
                    oldest_size=segments[oldest].size,
                    oldest_live=live_bytes,
                    disk=disk,
                    segments=len(segments),
                    limits=limits,
                )
                if not (worth or (disk > tight and gain > codec.HEADER_SIZE)):
                    return
                self._compact(oldest)
            self._log.retire(oldest)

    def _compact(self, number: int) -> None:
        """Append the waiting records of segment `number` to the active segment (same entries, same
        rowid, id and seq: a crash between the copy and the unlink only leaves two copies of each)."""
        source = self._log.segments[number]
        moving = sorted(
            (lv for lv in self.state.index.entries.values() if lv.segment == number), key=lambda lv: lv.rowid
        )
        self._append_records([source.read(lv.offset, lv.length) for lv in moving])

    def housekeeping(self) -> None:
        """Expire records past their TTL, apply the free-space floor, keep the uptime fresh."""
        now = self.uptime()
        with self.writer, self.lock:
            index = self.state.index
            old = policy.expired(
                index,
                self.limits,
                now_uptime=now,
                now_wall=self._wall(),
                trusted_now=bool(self._clock_trusted()),
            )
            victims = self._evictions([], frozenset(lv.rowid for lv in old))
            chunks = []
            drop_list = [codec.Dropped(lv.rowid, int(lv.priority), lv.size, "ttl") for lv in old]
            drop_list += [codec.Dropped(lv.rowid, int(lv.priority), lv.size, "budget") for lv in victims]
            if drop_list:
                chunks.append(codec.encode_drops(drop_list))
            elif not (index.entries and now - self._last_clock_write >= IDLE_CLOCK_S):
                self._retire_and_compact()
                return
            if self._log.needs_new_segment():
                self._rotate()
            self._write_group(chunks, now)
            for dropped in drop_list:
                index.remove(dropped.rowid)
                self.state.tally.add(Priority(dropped.priority), dropped.reason, dropped.size, saved=True)
            if drop_list:
                log.warning("spool dropped %d record(s) past their TTL or over the budget", len(drop_list))
            self._retire_and_compact()

    # -- reading ------------------------------------------------------------------------------------
    def read(self, chosen: list[Live]) -> tuple[list[Record], list[int]]:
        """The chosen records (the newest from memory, the others back from disk), and the rowids
        of any that no longer check out on disk."""
        kept = {lv.rowid: r for lv in chosen if (r := self.recent.get(lv.rowid)) is not None}
        spans: dict[int, memoryview] = {}
        ordered = sorted((lv for lv in chosen if lv.rowid not in kept), key=lambda lv: (lv.segment, lv.offset))
        run: list[Live] = []
        for live in [*ordered, None]:
            if run and (
                live is None
                or live.segment != run[-1].segment
                or not 0 <= live.offset - (run[-1].offset + run[-1].length) <= READ_GAP_BYTES
            ):
                first = run[0]
                with contextlib.suppress(OSError):
                    blob = memoryview(  # slices of it are views: each record's bytes are copied once
                        self._log.segments[first.segment].read(
                            first.offset, run[-1].offset + run[-1].length - first.offset
                        )
                    )
                    for member in run:
                        spans[member.rowid] = blob[
                            member.offset - first.offset : member.offset - first.offset + member.length
                        ]
                run = []
            if live is not None:
                run.append(live)
        records, damaged = [], []
        for live in chosen:
            if live.rowid in kept:
                records.append(kept[live.rowid])
                continue
            try:
                records.append(self._decode(live, spans.get(live.rowid, memoryview(b""))))
            except ValueError as exc:  # damaged since it was written: count it, go on
                log.error("spool: record %d cannot be read back (%s); dropping it", live.rowid, exc)
                damaged.append(live.rowid)
        return records, damaged

    @staticmethod
    def _decode(live: Live, raw: memoryview) -> Record:
        fields, payload = codec.read_record(raw)
        return Record(
            live.rowid,
            fields.id,
            fields.stream,
            fields.seq,
            live.priority,
            fields.topic,
            payload,
            fields.retain,
            fields.accepted_uptime,
        )
