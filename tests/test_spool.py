"""The durable spool on its own: acceptance, seq, bounds, eviction order, TTL under clock jumps, corruption."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading

import pytest

from agent.uplink.spool import Outgoing, Priority, Spool, SpoolLimits, codec
from agent.uplink.spool.segments import PREALLOCATE_BYTES


def event(n: int = 0, priority: Priority = Priority.EVENT) -> list[Outgoing]:
    return [Outgoing("events", priority, "events", {"type": "object_appeared", "n": n})]


def with_thumb(n: int, size: int = 8000) -> list[Outgoing]:
    return [*event(n), Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", os.urandom(size), sequenced=False)]


def telemetry(n: int, size: int = 2000) -> list[Outgoing]:
    return [Outgoing("telemetry", Priority.TELEMETRY, "telemetry", {"n": n, "pad": "x" * size})]


class Clocks:
    """Controllable monotonic and wall clocks for TTL tests."""

    def __init__(self, wall: float) -> None:
        self.mono = 1000.0
        self.wall = wall
        self.trusted = False


@pytest.fixture
def spool_path(tmp_path):
    return tmp_path / "spool"


def test_seq_and_id_are_assigned_at_commit_and_persist(spool_path):
    committed = []
    with Spool(spool_path) as spool:
        spool.add_listener(committed.extend)
        for n in range(5):
            spool.accept(with_thumb(n))
        assert spool.flush()
    with Spool(spool_path) as spool:
        spool.add_listener(committed.extend)
        spool.accept(event(5))
        spool.flush()
        assert spool.seq("events") == 6
    events = [r for r in committed if r.stream == "events"]
    thumbs = [r for r in committed if r.stream == "thumbs"]
    assert [r.seq for r in events] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(r.payload)["seq"] for r in events] == [1, 2, 3, 4, 5, 6]
    assert len({r.id for r in events}) == 6
    # each thumbnail is named after its event and carries no seq
    assert [t.topic for t in thumbs] == [f"thumbs/{e.id}" for e in events[:5]]
    assert all(t.seq is None for t in thumbs)


def test_group_commits_batch_many_records(spool_path):
    with Spool(spool_path, limits=SpoolLimits(commit_interval_s=0.2)) as spool:
        for n in range(200):
            spool.accept(event(n))
        spool.flush()
        assert spool.stats()["depth"] == 200
        assert spool.commits <= 5


def test_ack_removes_only_that_record(spool_path):
    with Spool(spool_path) as spool:
        for n in range(3):
            spool.accept(event(n))
        spool.flush()
        records = spool.next_records(10)
        spool.ack([records[1].rowid])
        spool.flush()
        left = spool.next_records(10)
    assert [r.seq for r in left] == [1, 3]


def test_priority_order_and_backlog_share(spool_path):
    with Spool(spool_path) as spool:
        for n in range(8):
            spool.accept(telemetry(n, 10))
            spool.accept(with_thumb(n, 100))
        spool.accept(event(99, Priority.CRITICAL))
        spool.flush()
        first = spool.next_records(30)
        assert [r.priority for r in first] == sorted(r.priority for r in first)
        assert first[0].priority == Priority.CRITICAL
        # live (accepted after `live_since`) first, but every 4th from the backlog
        backlog_cut = first[-1].accepted_uptime + 1e-6
        for n in range(8):
            spool.accept(event(100 + n))
        spool.flush()
        mixed = spool.next_records(8, live_since=backlog_cut, max_priority=Priority.EVENT)
        kinds = [
            "live" if r.accepted_uptime >= backlog_cut else "backlog"
            for r in mixed
            if r.priority == Priority.EVENT
        ]
        assert kinds[:4] == ["live", "live", "live", "backlog"]


def padded_event(n: int, priority: Priority = Priority.EVENT, pad: int = 900) -> list[Outgoing]:
    return [Outgoing("events", priority, "events", {"type": "object_appeared", "n": n, "pad": "x" * pad})]


def test_ten_times_the_budget_evicts_old_metadata_last_and_keeps_every_critical(spool_path):
    """~11x the budget offered: thumbnails, telemetry and event metadata (the metadata alone is more than
    the budget), plus a critical record every 50 groups. The spool stays within budget throughout; once
    telemetry and thumbnails are gone it evicts the oldest event metadata, and no critical record."""
    budget = 2 * 1024 * 1024
    limits = SpoolLimits(budget_bytes=budget, free_floor_bytes=0, commit_interval_s=0.05)
    committed: dict[int, Priority] = {}  # seq -> class, as the spool committed them
    offered = 0
    with Spool(spool_path, limits=limits) as spool:
        spool.add_listener(
            lambda records: committed.update({r.seq: r.priority for r in records if r.stream == "events"})
        )
        for n in range(2600):
            group = [*padded_event(n), Outgoing("thumbs", Priority.THUMB, "thumbs/{id}", os.urandom(6000),
                                                  sequenced=False)]  # fmt: skip
            spool.accept(group)
            spool.accept(telemetry(n, 1500))
            offered += 6000 + 1500 + 1000
            if n % 50 == 0:
                spool.accept(padded_event(n, Priority.CRITICAL))
            if n % 100 == 0:
                assert spool.flush()
                assert spool.disk_bytes() <= budget
        assert spool.flush()
        stats = spool.stats()
        assert spool.disk_bytes() <= budget
        left = spool.next_records(100_000, max_priority=Priority.EVENT)
    assert offered >= 10 * budget
    classes = stats["classes"]
    criticals = {seq for seq, prio in committed.items() if prio == Priority.CRITICAL}
    assert len(criticals) == 52
    # every critical record survived; none was ever dropped
    assert classes["critical"]["depth"] == len(criticals) and not classes["critical"]["drops"]
    assert {r.seq for r in left if r.priority == Priority.CRITICAL} == criticals
    # old event metadata was evicted (the promise's last resort), after everything of lower priority
    event_drops = classes["event"]["drops"]["budget"]["count"]
    assert event_drops > 0
    assert classes["telemetry"]["depth"] == 0 and classes["thumb"]["depth"] == 0
    assert classes["telemetry"]["drops"]["budget"]["count"] == 2600
    # ...and it was the oldest metadata that went: what is left is the newest, without holes
    normal_left = sorted(r.seq for r in left if r.priority == Priority.EVENT)
    normal_all = sorted(seq for seq, prio in committed.items() if prio == Priority.EVENT)
    assert normal_left == [s for s in normal_all if s >= normal_left[0]]
    assert normal_left[-1] == normal_all[-1]
    assert len(normal_all) - len(normal_left) == event_drops
    assert sum(p.stat().st_size for p in spool_path.iterdir()) <= budget


def test_free_space_floor_is_respected(spool_path):
    st = os.statvfs(spool_path.parent)  # the spool directory is created on start
    free = st.f_bavail * st.f_frsize
    limits = SpoolLimits(budget_bytes=10 << 30, free_floor_bytes=free - 512 * 1024, commit_interval_s=0.05)
    with Spool(spool_path, limits=limits) as spool:
        for n in range(400):
            spool.accept(with_thumb(n, 8000))
        spool.flush()
        assert spool.stats()["bytes"] <= 512 * 1024
        assert spool.stats()["classes"]["thumb"]["drops"]["budget"]["count"] > 0


def test_ttl_survives_clock_jumps(spool_path):
    """Boot in 1970, NTP jumps to today: nothing expires. Then a week of uptime passes: it does."""
    clocks = Clocks(wall=100.0)  # 1970
    day = 86400.0
    limits = SpoolLimits(ttl_s={p: 7 * day for p in Priority})
    spool = Spool(
        spool_path,
        limits=limits,
        clock_trusted=lambda: clocks.trusted,
        monotonic=lambda: clocks.mono,
        wall=lambda: clocks.wall,
    )
    with spool:
        spool.accept(event(1))
        spool.flush()
        clocks.wall = 1_795_000_000.0  # NTP: 56 years later
        clocks.trusted = True
        clocks.mono += 60
        spool.expire_now()
        assert spool.stats()["depth"] == 1
        clocks.mono += 8 * day  # a real week of uptime
        spool.expire_now()
        assert spool.stats()["depth"] == 0
        assert spool.stats()["classes"]["event"]["drops"]["ttl"]["count"] == 1


def test_ttl_counts_downtime_only_when_the_clock_was_trusted_both_times(spool_path):
    clocks = Clocks(wall=1_795_000_000.0)
    clocks.trusted = True
    day = 86400.0
    limits = SpoolLimits(ttl_s={p: 7 * day for p in Priority})

    def open_spool():
        return Spool(
            spool_path,
            limits=limits,
            clock_trusted=lambda: clocks.trusted,
            monotonic=lambda: clocks.mono,
            wall=lambda: clocks.wall,
        )

    with open_spool() as spool:
        spool.accept(event(1))
        spool.flush()
    clocks.wall += 10 * day  # powered off for ten days (monotonic restarts at boot)
    clocks.mono = 5.0
    with open_spool() as spool:
        spool.expire_now()
        assert spool.stats()["depth"] == 0  # trusted then and now: the downtime counts


def test_uptime_ages_persist_across_restarts(spool_path):
    clocks = Clocks(wall=0.0)
    day = 86400.0
    limits = SpoolLimits(ttl_s={p: 7 * day for p in Priority})

    def open_spool():
        return Spool(spool_path, limits=limits, monotonic=lambda: clocks.mono, wall=lambda: clocks.wall)

    with open_spool() as spool:
        spool.accept(event(1))
        spool.flush()
        clocks.mono += 4 * day
    clocks.mono = 3.0  # reboot: monotonic restarts, the untrusted wall clock is useless
    with open_spool() as spool:
        clocks.mono += 2 * day
        spool.expire_now()
        assert spool.stats()["depth"] == 1  # 6 days of uptime so far
        clocks.mono += 2 * day
        spool.expire_now()
        assert spool.stats()["depth"] == 0


def segments(spool_path):
    return sorted(spool_path.glob("seg-*.log"))


def commit_events(spool_path, numbers, *, one_commit_each: bool = False):
    """Commit the events `numbers` (in one commit, or one commit each); returns the only segment."""
    with Spool(spool_path) as spool:
        for n in numbers:
            spool.accept(event(n))
            if one_commit_each:
                spool.flush()
        spool.flush()
    (only,) = segments(spool_path)
    return only


def test_a_destroyed_spool_is_moved_aside_and_the_spool_goes_on(spool_path):
    only = commit_events(spool_path, range(3))
    garbage = b"this is not a spool" * 100
    only.write_bytes(garbage)
    with Spool(spool_path) as spool:
        assert spool.recovered_from is not None
        assert spool.recovered_from.read_bytes() == garbage  # moved aside, never deleted
        assert spool.stats()["set_aside"] == [{"name": spool.recovered_from.name, "bytes": len(garbage)}]
        spool.accept(event(9))
        spool.flush()
        assert spool.stats()["depth"] == 1


def test_damage_in_the_middle_is_set_aside_and_what_decodes_is_kept(spool_path):
    with Spool(spool_path) as spool:
        for n in range(300):
            spool.accept(with_thumb(n, 3000))
            if n % 10 == 9:
                spool.flush()  # many commits, so the damage hits some and spares others
        spool.flush()
    (only,) = segments(spool_path)
    size = log_end(only)
    with open(only, "r+b") as fh:  # scribble over the middle of the log
        fh.seek(size // 2)
        fh.write(os.urandom(8192))
    with Spool(spool_path) as spool:
        assert spool.recovered_from is not None
        assert spool.seq("events") == 300  # seq continues: no seq is ever handed out twice
        kept = spool.stats()["classes"]["event"]["depth"]
        assert 250 < kept < 300  # the commits around the damage are lost, the rest is kept
        records = spool.next_records(1000, max_priority=Priority.EVENT)
        assert len(records) == kept and all(json.loads(r.payload)["seq"] == r.seq for r in records)
        spool.accept(event(301))
        spool.flush()
        assert spool.seq("events") == 301


def log_end(path) -> int:
    """Where the log in a segment file ends (after its last commit; zeros, or a recycled file's earlier
    life, follow up to the file's end)."""
    return codec.scan(path.read_bytes(), int(path.name[4:14])).end


def tear(path, start: int, end: int, fill: bytes | None = None) -> None:
    """What a power cut leaves of bytes [start, end) of a commit that was being written: zeros (the
    blocks as they were zero-filled ahead), or `fill`."""
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(fill if fill is not None else bytes(end - start))


def test_a_power_cut_mid_commit_loses_only_that_commit(spool_path):
    whole = log_end(commit_events(spool_path, range(5)))
    only = commit_events(spool_path, range(5, 8))
    grown = log_end(only)
    tear(only, whole + (grown - whole) // 2, grown)  # the last write half on disk
    with Spool(spool_path) as spool:
        assert spool.recovered_from is None  # a torn tail is normal after a power cut, not damage
        assert spool.seq("events") == 5
        assert [r.seq for r in spool.next_records(10)] == [1, 2, 3, 4, 5]
        spool.accept(event(9))
        spool.flush()
        assert spool.seq("events") == 6  # the lost commit was never accepted: its seqs are given again


def test_commits_overwrite_blocks_written_ahead_and_never_grow_the_file(spool_path):
    """A commit must not change the segment's size or allocation (on ext4 that costs a journal commit
    per fdatasync): the blocks are zero-filled ahead, a megabyte at a time, and overwritten."""
    with Spool(spool_path, limits=SpoolLimits(commit_interval_s=0.01)) as spool:
        spool.accept(event(0))
        spool.flush()
        (only,) = segments(spool_path)
        before = os.stat(only)
        assert before.st_size >= PREALLOCATE_BYTES and before.st_blocks * 512 >= before.st_size  # no holes
        for n in range(1, 200):
            spool.accept(event(n))
            assert spool.flush()
        after = os.stat(only)
        assert spool.commits >= 200
        assert (after.st_size, after.st_blocks) == (before.st_size, before.st_blocks)
        assert spool.disk_bytes() == after.st_size  # the budget counts the zero-filled blocks too
        end = log_end(only)
        assert 0 < end < after.st_size and not only.read_bytes()[end:].strip(b"\0")


def test_a_full_segment_is_cut_to_its_log_when_the_next_one_starts(spool_path):
    """Finished segments end where their log ends, as older agents wrote them: an agent rolled back to
    an older release (which takes anything after the last commit of an older segment for damage)
    reads them as before; only the active segment has a zero-filled end."""
    limits = SpoolLimits(budget_bytes=4 * 1024 * 1024)  # 128 kB segments
    with Spool(spool_path, limits=limits) as spool:
        for n in range(200):
            spool.accept(with_thumb(n, 3000))
            if n % 10 == 9:
                spool.flush()
        spool.flush()
        *full, active = segments(spool_path)
        assert len(full) >= 2
        for path in full:
            assert path.stat().st_size == log_end(path) >= limits.segment_bytes
        assert active.stat().st_size > log_end(active)
    with Spool(spool_path, limits=limits) as spool:
        assert spool.recovered_from is None and spool.seq("events") == 200


def test_retired_segments_are_overwritten_in_place_and_their_old_entries_never_return(spool_path, tmp_path):
    """A segment whose records have all left becomes the file of a later segment, so no zeros are
    written ahead for it (SD-card wear), and nothing of the file's earlier life is ever read back:
    not after a power cut (the directory as it was while the spool ran), and not by an older release
    after a clean stop (which reads a segment to its end)."""
    limits = SpoolLimits(budget_bytes=4 * 1024 * 1024, commit_interval_s=0.01)  # 128 kB segments
    held: list[int] = []
    hold = threading.Event()

    def deliver(records):  # a good link acknowledges at once; while `hold` is set, nothing is
        if hold.is_set():
            held.extend(r.rowid for r in records)
        else:
            spool.ack(r.rowid for r in records)

    def offer(numbers):
        for n in numbers:
            spool.accept(with_thumb(n, 3000))
            if n % 10 == 9:
                spool.flush()
        spool.flush()

    crash_image = tmp_path / "as-the-power-cut-left-it"
    with Spool(spool_path, limits=limits) as spool:
        spool.add_listener(deliver)
        offer(range(200))  # segments start, fill, and retire as their records are delivered
        log = spool._store._log
        zeros, started = log.zero_filled, max(log.segments)
        offer(range(200, 400))
        new_segments = max(log.segments) - started
        assert new_segments >= 3
        # overwriting retired files: at most the last commit's page past a file's old end is zero-filled
        assert log.zero_filled - zeros < new_segments * 4096, "new segments must not be zero-filled files"
        hold.set()
        offer(range(400, 405))
        active = segments(spool_path)[-1]
        assert active.read_bytes()[log_end(active) :].strip(b"\0"), "the active segment is a recycled file"
        shutil.copytree(spool_path, crash_image)
        hold.clear()
        offer(range(405, 420))
    with Spool(crash_image, limits=limits) as spool:
        assert spool.recovered_from is None
        assert spool.seq("events") == 405
        assert sorted(r.rowid for r in spool.next_records(1000)) == sorted(held)  # nothing older came back
    assert not list(spool_path.glob("spare-*"))
    for path in segments(spool_path):  # after a clean stop, a reader that knows nothing of recycling
        data = path.read_bytes()
        assert codec.scan(data).end == log_end(path) and not data[log_end(path) :].strip(b"\0")
    with Spool(spool_path, limits=limits) as spool:
        assert spool.seq("events") == 420 and spool.stats()["depth"] == 10


def test_a_reopened_segment_ends_at_its_last_commit_and_appends_after_it(spool_path):
    only = commit_events(spool_path, range(10), one_commit_each=True)
    size, end = only.stat().st_size, log_end(only)
    assert end < size  # zeros after the log
    with Spool(spool_path) as spool:
        assert spool.recovered_from is None and not spool.set_aside()
        assert [r.seq for r in spool.next_records(100)] == list(range(1, 11))
        spool.accept(event(10))
        spool.flush()
        assert spool.seq("events") == 11
    assert only.stat().st_size == size and log_end(only) > end  # written where the log ended, in place
    with Spool(spool_path) as spool:
        assert [r.seq for r in spool.next_records(100)] == list(range(1, 12))


def test_garbage_after_the_last_commit_is_cut_to_zeros_and_never_read_as_records(spool_path):
    """A torn tail that is not zeros (part of a commit's entries) is not damage; it is overwritten with
    zeros, so a shorter commit written there later cannot be followed by the old bytes."""
    only = commit_events(spool_path, range(3))
    end = log_end(only)
    with Spool(spool_path) as spool:  # a big commit, then torn: its frames are on disk, its COMMIT not
        spool.accept(with_thumb(3, 6000))
        spool.flush()
        grown = log_end(only)
    tear(only, grown, log_end(only))  # the power cut came before the commit closing the spool
    data = only.read_bytes()
    tear(only, end, grown, data[end : grown - 40] + bytes(40))  # all but the COMMIT entry's bytes
    with Spool(spool_path) as spool:
        assert spool.recovered_from is None and not spool.set_aside()
        assert spool.seq("events") == 3
        assert not only.read_bytes()[log_end(only) :].strip(b"\0")  # the torn bytes are zeros now
        spool.accept(event(4))
        spool.flush()
    with Spool(spool_path) as spool:
        assert spool.recovered_from is None
        assert [r.seq for r in spool.next_records(100, max_priority=Priority.THUMB)] == [1, 2, 3, 4]


def test_a_commit_whose_first_page_never_reached_the_card_is_not_committed(spool_path):
    """An overwrite's pages may reach the card in any order: if a power cut inside the fdatasync
    leaves the end of a commit (its COMMIT entry) without its beginning, the commit does not count
    (it was never reported committed) and it is a torn tail, not damage."""
    only = commit_events(spool_path, range(3))
    end = log_end(only)
    with Spool(spool_path) as spool:
        spool.accept(with_thumb(3, 9000))  # a commit over three pages
        spool.flush()
        grown = log_end(only)
    tear(only, grown, log_end(only))  # the power cut came before the commit closing the spool
    with open(only, "rb") as fh:
        fh.seek(end)
        commit = fh.read(grown - end)
    first_page_end = (end // 4096 + 1) * 4096
    tear(only, end, first_page_end)  # its first page lost, the rest (and its COMMIT entry) written
    scan = codec.scan(only.read_bytes())
    assert scan.end == end and commit[-40:] in only.read_bytes()  # a valid COMMIT frame, not counted
    with Spool(spool_path) as spool:
        assert spool.recovered_from is None and not spool.set_aside()
        assert spool.seq("events") == 3 and spool.stats()["depth"] == 3
        spool.accept(event(5))
        spool.flush()
        assert spool.seq("events") == 4


def test_a_segment_whose_first_commit_never_reached_the_disk_is_not_damage(spool_path):
    """A power cut just after a new segment was created leaves an empty file: it held nothing, is not
    damage, and must not be appended to without its header (the next start would find it corrupt)."""
    with Spool(spool_path) as spool:
        for n in range(3):
            spool.accept(event(n))
        spool.flush()
    (spool_path / "seg-0000000002.log").write_bytes(b"")
    for run in range(2):
        with Spool(spool_path) as spool:
            assert spool.recovered_from is None and not spool.set_aside()
            spool.accept(event(10 + run))
            spool.flush()
            assert spool.seq("events") == 4 + run


def test_a_damaged_header_keeps_the_commits_after_it(spool_path):
    only = commit_events(spool_path, range(20), one_commit_each=True)
    data = bytearray(only.read_bytes())
    data[:8] = b"\0" * 8
    only.write_bytes(bytes(data))
    with Spool(spool_path) as spool:
        assert spool.recovered_from is not None
        assert spool.seq("events") == 20  # seq continues: the records after the header still decode
        assert spool.stats()["classes"]["event"]["depth"] == 20


def sent_fields(record) -> tuple:
    """What the publisher uses of a record."""
    return (record.rowid, record.id, record.stream, record.seq, record.priority, record.topic,
            record.payload, record.retain, record.accepted_uptime, record.is_json)  # fmt: skip


def read_back(spool) -> dict:
    return spool.status()["read_back"]


def test_the_newest_records_reach_the_publisher_from_memory_as_they_are_on_disk(spool_path):
    with Spool(spool_path) as spool:
        for n in range(30):
            spool.accept(with_thumb(n, 3000))
        spool.flush()
        from_memory = spool.next_records(100)
        assert read_back(spool)["from_memory"] == 60 and read_back(spool)["from_disk"] == 0
    with Spool(spool_path) as spool:  # a restart: nothing in memory, all of it read back and checked
        from_disk = spool.next_records(100)
        assert read_back(spool)["from_disk"] == 60
    assert [sent_fields(r) for r in from_memory] == [sent_fields(r) for r in from_disk]


def test_memory_for_the_newest_records_is_bounded_and_the_rest_is_read_from_disk(spool_path):
    from agent.uplink.spool.recent import DEFAULT_MAX_BYTES

    size = 64 * 1024
    count = 2 * DEFAULT_MAX_BYTES // size  # twice what memory keeps
    with Spool(spool_path, limits=SpoolLimits(budget_bytes=64 * 1024 * 1024)) as spool:
        for n in range(count):
            spool.accept(with_thumb(n, size))
            if n % 8 == 7:
                spool.flush()
        spool.flush()
        assert read_back(spool)["kept_bytes"] <= DEFAULT_MAX_BYTES
        thumbs = [r for r in spool.next_records(2 * count) if r.stream == "thumbs"]
        assert len(thumbs) == count
        counts = read_back(spool)
        assert counts["from_disk"] >= count // 2 and counts["from_memory"] >= count // 4


def test_an_acknowledged_record_leaves_memory_too(spool_path):
    with Spool(spool_path) as spool:
        for n in range(5):
            spool.accept(with_thumb(n, 50_000))
        spool.flush()
        kept = read_back(spool)["kept_bytes"]
        records = spool.next_records(10)
        spool.ack(r.rowid for r in records if r.stream == "thumbs")
        assert read_back(spool)["kept_bytes"] <= kept - 5 * 50_000


def test_a_record_damaged_on_disk_is_still_caught_when_it_is_read_back(spool_path):
    """Records older than what memory keeps come from disk, where their checksum is checked: damage
    is counted and skipped, the others go out."""
    from agent.uplink.spool.recent import DEFAULT_MAX_BYTES

    size = 256 * 1024
    first = event(0)[0].body
    with Spool(spool_path, limits=SpoolLimits(budget_bytes=128 * 1024 * 1024)) as spool:
        spool.accept(event(0))
        spool.flush()
        for n in range(1, 2 * DEFAULT_MAX_BYTES // size):  # pushes the first event out of memory
            spool.accept([Outgoing("telemetry", Priority.TELEMETRY, "telemetry", {"n": n, "pad": "x" * size})])
            spool.flush()
        oldest = segments(spool_path)[0]
        at = oldest.read_bytes().find(json.dumps(first["type"]).encode())
        assert at > 0
        with oldest.open("r+b") as f:  # one byte of the first event's payload, after its commit
            f.seek(at + 1)
            f.write(b"X")
        records = spool.next_records(1, max_priority=Priority.EVENT)
        assert records == []
        assert spool.stats()["classes"]["event"]["drops"]["damaged"]["count"] == 1


def test_accept_never_waits_for_the_disk(spool_path, monkeypatch):
    """A stuck disk (an fdatasync that does not return) must not block the producer; overflow sheds
    low priority first."""
    limits = SpoolLimits(max_pending_bytes=64 * 1024)
    spool = Spool(spool_path, limits=limits).start()
    stuck = threading.Event()
    released = threading.Event()
    real_append = spool._store._log.append

    def stuck_append(chunks):
        stuck.set()
        released.wait(30)
        return real_append(chunks)

    monkeypatch.setattr(spool._store._log, "append", stuck_append)
    try:
        spool.accept(event(0))
        assert stuck.wait(10)  # the committer is now inside a write that does not return
        done = threading.Event()

        def produce():
            for n in range(200):
                spool.accept(with_thumb(n, 2000))
            spool.accept(event(999, Priority.CRITICAL))
            done.set()

        threading.Thread(target=produce).start()
        assert done.wait(10)
    finally:
        released.set()
    spool.flush()
    stats = spool.stats()
    spool.stop()
    assert stats["classes"]["critical"]["depth"] == 1
    assert stats["classes"]["thumb"]["drops"]["queue_full"]["count"] > 0


def test_readonly_stats_of_a_spool_in_use(spool_path):
    with Spool(spool_path) as spool:
        spool.accept(event(1))
        spool.flush()
        stats = Spool.read_stats(spool_path)
    assert stats["depth"] == 1 and stats["seq"] == {"events": 1}
    with pytest.raises(FileNotFoundError):
        Spool.read_stats(spool_path.with_name("missing"))


def test_rowids_are_never_reused(spool_path):
    """An in-flight record can be evicted; its late PUBACK must not delete a newer record with the same id."""
    with Spool(spool_path) as spool:
        spool.accept(event(1))
        spool.flush()
        (first,) = spool.next_records(5)
        spool.ack([first.rowid])
        spool.flush()
    with Spool(spool_path) as spool:  # and not after a restart with nothing left waiting either
        spool.accept(event(2))
        spool.flush()
        (second,) = spool.next_records(5)
    assert second.rowid > first.rowid


def test_a_locked_spool_is_left_alone(spool_path):
    """Another process holding the spool is not damage: nothing is moved aside."""
    from agent.uplink.spool import SpoolUnavailable

    with Spool(spool_path) as spool:
        spool.accept(event(1))
        spool.flush()
    holder = os.open(spool_path / "LOCK", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(SpoolUnavailable, match="another agent"):
            Spool(spool_path).start()
    finally:
        os.close(holder)
    assert not list(spool_path.glob("*.corrupt-*"))
    with Spool(spool_path) as spool:
        assert spool.stats()["depth"] == 1


def test_unencodable_records_are_refused_and_commits_go_on(spool_path):
    with Spool(spool_path) as spool:
        assert not spool.accept([Outgoing("events", Priority.EVENT, "events", {"bad": {1, 2}})])
        assert spool.accept(event(2))
        assert spool.flush()
        stats = spool.stats()
    assert stats["depth"] == 1
    assert stats["classes"]["event"]["drops"]["unencodable"]["count"] == 1


def test_a_failed_commit_is_retried_without_duplicating_committed_ones(spool_path, monkeypatch):
    committed = []
    with Spool(spool_path, limits=SpoolLimits(commit_interval_s=0.05)) as spool:
        spool.add_listener(committed.extend)
        real = spool._store._log.append
        calls = {"n": 0}

        def flaky(chunks):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(5, "Input/output error")
            return real(chunks)

        monkeypatch.setattr(spool._store._log, "append", flaky)
        for n in range(40):
            spool.accept(with_thumb(n, 6000))
            if n % 8 == 7:
                assert spool.flush()
        assert spool.flush()
        seqs = [r.seq for r in committed if r.stream == "events"]
        assert spool.stats()["classes"]["event"]["depth"] == 40
    assert calls["n"] > 3
    assert sorted(seqs) == list(range(1, 41))  # every event once: no re-written copies with new seqs
    with Spool(spool_path) as spool:  # and on disk too
        assert sorted(r.seq for r in spool.next_records(100, max_priority=Priority.EVENT)) == list(range(1, 41))


def test_other_stages_persist_small_state_with_commits(spool_path):
    with Spool(spool_path) as spool:
        spool.put_meta("budget.day", '{"start": 5, "spent": 1234}')
        assert spool.get_meta("budget.day") == '{"start": 5, "spent": 1234}'
        spool.flush()
    with Spool(spool_path) as spool:
        assert spool.get_meta("budget.day") == '{"start": 5, "spent": 1234}'
        assert spool.get_meta("missing") is None
