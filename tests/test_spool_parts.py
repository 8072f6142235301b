"""The spool's parts on their own: the entry codec (torn tails vs damage), the in-memory index and its
live/backlog order, and the eviction and TTL rules. No threads, no disk."""

from __future__ import annotations

import os

from agent.uplink.spool import codec, policy
from agent.uplink.spool.index import Live, LiveIndex
from agent.uplink.spool.records import Priority
from agent.uplink.spool.state import replay


def record(rowid: int, seq: int | None = None, payload: bytes = b"{}", priority: int = 1) -> bytes:
    return codec.encode_record(
        rowid=rowid, priority=priority, seq=seq, accepted_uptime=float(rowid), accepted_wall=0.0,
        retain=False, trusted=False, id=f"id-{rowid}", stream="events", topic="events", payload=payload,
    )  # fmt: skip


def segment(*groups: list[bytes]) -> bytes:
    data = codec.MAGIC
    for number, group in enumerate(groups, start=1):
        data += closed(number, *group)
    return data


def closed(number: int, *entries: bytes) -> bytes:
    """A group as the spool writes it: its entries and the COMMIT entry naming their length and CRC."""
    group = b"".join(entries)
    return group + codec.encode_commit(number, group)


def test_a_group_counts_only_with_its_commit_entry():
    whole = segment([record(1, 1)], [record(2, 2), record(3, 3)])
    cut = whole[: -len(codec.encode_commit(2, b"")) - 5]  # the second group's write stopped short
    scan = codec.scan(cut)
    assert len(scan.groups) == 1 and not scan.damaged
    assert scan.end == len(segment([record(1, 1)]))
    state = replay([(1, scan.groups)])
    assert state.seq == {"events": 1} and list(state.index.entries) == [1]


def test_garbage_after_the_last_commit_is_a_torn_tail_not_damage():
    data = segment([record(1, 1)]) + os.urandom(300)
    scan = codec.scan(data)
    assert len(scan.groups) == 1 and not scan.damaged and scan.end == len(segment([record(1, 1)]))


def test_damage_followed_by_good_commits_is_reported_and_skipped():
    first = segment([record(1, 1)])
    second_group = closed(2, record(2, 2))
    third_group = closed(3, record(3, 3))
    data = bytearray(first + second_group + third_group)
    data[len(first) + 20] ^= 0xFF  # a flipped bit inside record 2
    scan = codec.scan(bytes(data))
    assert scan.damaged, "damage with committed groups after it must not pass for a torn tail"
    state = replay([(1, scan.groups)])
    assert sorted(state.index.entries) == [1, 3] and state.seq == {"events": 3}


def test_zeros_after_the_last_commit_end_the_log():
    """A segment zero-filled ahead: the log ends at its last commit, and nothing there is damage."""
    data = segment([record(1, 1)], [record(2, 2)])
    scan = codec.scan(data + bytes(1 << 20))
    assert len(scan.groups) == 2 and not scan.damaged and scan.end == len(data)


def test_a_commit_with_a_hole_in_its_group_does_not_count():
    """Pages of an overwrite reach the card in any order: the end of a group and its COMMIT entry
    without the group's beginning (zeros, or the bytes that were there) is not a committed group."""
    first = segment([record(1, 1)])
    group = closed(2, record(2, 2, os.urandom(5000)), record(3, 3))
    for hole in (bytes(100), os.urandom(100)):
        data = first + hole + group[len(hole) :] + bytes(4096)
        scan = codec.scan(data)
        assert len(scan.groups) == 1 and scan.end == len(first) and not scan.damaged
        assert list(replay([(1, scan.groups)]).index.entries) == [1]
    scan = codec.scan(first + group + bytes(4096))  # the same group whole counts
    assert len(scan.groups) == 2 and sorted(replay([(1, scan.groups)]).index.entries) == [1, 2, 3]


def test_segments_of_older_agents_commit_with_the_number_alone():
    data = codec.MAGIC + record(1, 1) + codec.encode_commit(1) + record(2, 2) + codec.encode_commit(2)
    scan = codec.scan(data)
    assert len(scan.groups) == 2 and scan.end == len(data) and not scan.damaged


def tagged(segment_number: int, *groups: list[bytes], first_commit: int = 1) -> bytes:
    """A segment as this spool writes it: every COMMIT names the segment it was written for."""
    data = codec.MAGIC
    for number, entries in enumerate(groups, start=first_commit):
        group = b"".join(entries)
        data += group + codec.encode_commit(number, group, segment_number)
    return data


def test_a_recycled_file_ends_where_its_earlier_life_begins():
    """A retired segment's file reused for segment 9: the new groups overwrite its start, and what
    follows them, valid groups of segment 4, is not segment 9's (an older reader would take it)."""
    old = tagged(4, [record(1, 1)], [record(2, 2)], [record(3, 3)])  # acknowledged in later segments
    new = tagged(9, [record(10, 10, b'{"n":10}')], first_commit=50)
    data = new + old[len(new) :]
    scan = codec.scan(data, 9)
    assert scan.stale and scan.end == len(new) and not scan.damaged and not scan.untagged
    assert sorted(replay([(9, scan.groups)]).index.entries) == [10]
    returned = set(replay([(9, codec.scan(data).groups)]).index.entries) - {10}  # unchecked, they return
    assert returned and returned <= {1, 2, 3}
    assert not codec.scan(new + bytes(4096), 9).stale  # zeros: the plain end of a log
    assert codec.scan(segment([record(1, 1)]), 1).untagged  # an older agent's segment is never recycled


def test_acks_and_drops_in_later_segments_apply_to_earlier_records():
    one = codec.scan(segment([record(1, 1), record(2, 2)]))
    two = codec.scan(
        segment([codec.encode_acks([1]), codec.encode_drops([codec.Dropped(2, 1, 2, "budget")])])
    )
    state = replay([(1, one.groups), (2, two.groups)])
    assert not state.index.entries
    assert state.tally.by_class(Priority.EVENT) == {"budget": {"count": 1, "bytes": 2}}
    assert state.seq == {"events": 2} and state.next_rowid == 3


def live(rowid: int, priority: Priority = Priority.EVENT, length: int = 100, uptime: float = 0.0) -> Live:
    return Live(rowid, priority, uptime, 0.0, False, 1, rowid * 100, length, length)


def test_select_takes_live_records_first_and_every_fourth_from_the_backlog():
    index = LiveIndex()
    for rowid in range(1, 21):
        index.add(live(rowid))
    picked = [lv.rowid for lv in index.select(8, boundary=11, backlog_share=0.25)]
    assert picked == [11, 12, 13, 1, 14, 15, 16, 2]
    assert [lv.rowid for lv in index.select(3, skip={11, 12})] == [1, 2, 3]


def test_select_goes_by_priority_and_skips_what_left():
    index = LiveIndex()
    index.add(live(1, Priority.TELEMETRY))
    index.add(live(2, Priority.THUMB))
    index.add(live(3, Priority.CRITICAL))
    index.add(live(4, Priority.EVENT))
    assert [lv.rowid for lv in index.select(10)] == [3, 4, 2, 1]
    index.remove(4)
    assert [lv.rowid for lv in index.select(10, max_priority=Priority.EVENT)] == [3]
    assert index.count[Priority.EVENT] == 0 and index.segment_bytes == {1: 300}


def test_eviction_takes_telemetry_then_thumbnails_then_old_metadata_and_critical_last():
    index = LiveIndex()
    for rowid, priority in enumerate(
        [Priority.CRITICAL, Priority.EVENT, Priority.THUMB, Priority.TELEMETRY, Priority.EVENT], start=1
    ):
        index.add(live(rowid, priority))
    new = [live(6, Priority.THUMB)]
    order = [lv.rowid for lv in policy.eviction_victims(index, 10_000, new=new)]
    assert order == [4, 3, 6, 2, 5, 1]  # the new thumbnail goes after the older one, before any event
    assert [lv.rowid for lv in policy.eviction_victims(index, 150, dead={4})] == [3, 2]


def test_ttl_uses_uptime_unless_the_clock_was_trusted_then_and_now():
    limits = policy.SpoolLimits(ttl_s=dict.fromkeys(Priority, 100.0))
    index = LiveIndex()
    index.add(Live(1, Priority.EVENT, 0.0, 1_000.0, True, 1, 0, 10, 10))  # trusted when accepted
    index.add(Live(2, Priority.EVENT, 0.0, 1_000.0, False, 1, 10, 10, 10))  # not trusted then
    assert policy.expired(index, limits, now_uptime=50.0, now_wall=1_000_000.0, trusted_now=False) == []
    old = policy.expired(index, limits, now_uptime=50.0, now_wall=1_000_000.0, trusted_now=True)
    assert [lv.rowid for lv in old] == [1]
    assert len(policy.expired(index, limits, now_uptime=101.0, now_wall=0.0, trusted_now=False)) == 2


def test_compaction_only_of_a_mostly_delivered_oldest_segment_when_it_pays():
    limits = policy.SpoolLimits(budget_bytes=32 * 1024 * 1024)
    due = policy.compaction_due
    assert not due(oldest_size=1000, oldest_live=600, disk=30 << 20, segments=20, limits=limits)
    assert not due(oldest_size=1000, oldest_live=100, disk=1 << 20, segments=3, limits=limits)
    assert due(oldest_size=1000, oldest_live=100, disk=20 << 20, segments=3, limits=limits)
    assert due(oldest_size=1000, oldest_live=100, disk=1 << 20, segments=9, limits=limits)
