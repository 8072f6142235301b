"""The spool's on-disk entries: framing, checksums and the bodies of each kind. Pure functions.

A segment file is a header followed by framed entries::

    frame = SYNC (2 bytes) | length u32 | crc32 u32 | kind (1 byte) | body (length - 1 bytes)

Entries are written in *groups*, one per commit, and every group ends with a COMMIT entry; a group
without its COMMIT (a power cut in the middle of a write) was never committed and is ignored. The
COMMIT entry carries the length and CRC-32 of the bytes of its group: segments are written in place
into blocks zero-filled ahead of time (segments.py), and a power cut inside the `fdatasync` of an
overwrite may leave a later page of the group on the card but not an earlier one, so a COMMIT only
counts when every byte before it, back to the previous COMMIT, is what was written. It also names
the segment it was written for: a segment file may be a recycled older one (segments.py), and the
groups of its earlier life that lie past the new log's end are valid groups of another segment,
where the scan stops. (Segments of older agents end their groups with a COMMIT of the number alone,
or without the segment; they are read as before.) The SYNC
marker lets a reader find the next entry after damaged bytes, to tell a torn tail (normal after a
power cut) from damage in the middle (an SD card going bad). A segment's unused, zero-filled end
holds no SYNC marker, so a scan stops at its first zero byte where an entry should begin.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

MAGIC = b"VIGILSPOOL\x00\x01"  # file header: name, format version
HEADER_SIZE = len(MAGIC)
SYNC = b"\xa5\x5a"
_FRAME = struct.Struct("<2sII")  # sync, length of kind+body, crc32 of kind+body
FRAME_OVERHEAD = _FRAME.size + 1

RECORD = b"R"  # a committed record
ACK = b"A"  # records the broker acknowledged (deleted)
DROP = b"D"  # records dropped without delivery, with the reason (counted)
STATE = b"S"  # a snapshot of counters, drop tallies and metadata (first entry of every segment)
META = b"M"  # small state other stages keep with the spool (put_meta)
CLOCK = b"U"  # spool uptime at this commit
COMMIT = b"C"  # end of a group: everything before it since the previous COMMIT is committed

_RECORD = struct.Struct("<QBqddB")  # rowid, priority, seq (-1: none), accepted uptime, accepted wall, flags
_RETAIN, _TRUSTED = 1, 2
_DROP = struct.Struct("<QBI")  # rowid (0: never committed), priority, payload bytes; then the reason
_U64 = struct.Struct("<Q")
_COMMIT = struct.Struct("<QII")  # commit number, length and crc32 of the group's bytes before it
_COMMIT_TAGGED = struct.Struct("<QIIQ")  # the same, and the number of the segment it was written for
_F64 = struct.Struct("<d")


def frame(kind: bytes, body: bytes) -> bytes:
    data = kind + body
    return _FRAME.pack(SYNC, len(data), zlib.crc32(data)) + data


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<H", len(raw)) + raw


_U16 = struct.Struct("<H")


def _read_text(body: memoryview, pos: int) -> tuple[str, int]:
    (size,) = _U16.unpack_from(body, pos)
    pos += 2
    return str(body[pos : pos + size], "utf-8"), pos + size


class RecordFields(NamedTuple):
    """A RECORD entry's fields; `payload_at` is the payload's offset within the entry body. (A tuple:
    a backlog drain decodes thousands a second.)"""

    rowid: int
    priority: int
    seq: int | None
    accepted_uptime: float
    accepted_wall: float
    retain: bool
    trusted: bool
    id: str
    stream: str
    topic: str
    payload_at: int


def encode_record(
    *,
    rowid: int,
    priority: int,
    seq: int | None,
    accepted_uptime: float,
    accepted_wall: float,
    retain: bool,
    trusted: bool,
    id: str,
    stream: str,
    topic: str,
    payload: bytes,
) -> bytes:
    flags = (_RETAIN if retain else 0) | (_TRUSTED if trusted else 0)
    head = _RECORD.pack(rowid, priority, -1 if seq is None else seq, accepted_uptime, accepted_wall, flags)
    return frame(RECORD, head + _text(id) + _text(stream) + _text(topic) + payload)


def decode_record(body: memoryview) -> RecordFields:
    rowid, priority, seq, uptime, wall, flags = _RECORD.unpack_from(body, 0)
    record_id, pos = _read_text(body, _RECORD.size)
    stream, pos = _read_text(body, pos)
    topic, pos = _read_text(body, pos)
    return RecordFields(
        rowid,
        priority,
        None if seq < 0 else seq,
        uptime,
        wall,
        bool(flags & _RETAIN),
        bool(flags & _TRUSTED),
        record_id,
        stream,
        topic,
        pos,
    )


def encode_acks(rowids: Iterable[int]) -> bytes:
    ids = sorted(rowids)
    return frame(ACK, struct.pack(f"<{len(ids)}Q", *ids))


def decode_acks(body: memoryview) -> list[int]:
    return list(struct.unpack_from(f"<{len(body) // 8}Q", body, 0))


@dataclass(frozen=True)
class Dropped:
    rowid: int  # 0 for a record that was refused before it was ever committed
    priority: int
    size: int
    reason: str


def encode_drops(drops: Iterable[Dropped]) -> bytes:
    return frame(DROP, b"".join(_DROP.pack(d.rowid, d.priority, d.size) + _text(d.reason) for d in drops))


def decode_drops(body: memoryview) -> list[Dropped]:
    found, pos = [], 0
    while pos < len(body):
        rowid, priority, size = _DROP.unpack_from(body, pos)
        reason, pos = _read_text(body, pos + _DROP.size)
        found.append(Dropped(rowid, priority, size, reason))
    return found


def encode_json(kind: bytes, value: Any) -> bytes:
    return frame(kind, json.dumps(value, separators=(",", ":")).encode())


def decode_json(body: memoryview) -> Any:
    return json.loads(bytes(body))


def encode_clock(uptime: float) -> bytes:
    return frame(CLOCK, _F64.pack(uptime))


def decode_clock(body: memoryview) -> float:
    return float(_F64.unpack_from(body, 0)[0])


def encode_commit(number: int, group: bytes | None = None, segment: int | None = None) -> bytes:
    """The COMMIT entry closing `group` (every byte written since the previous COMMIT or the file
    header) in segment number `segment`. Without `group`: the oldest form (the number alone), which
    proves nothing about the group; without `segment`, the form that does not name its segment.
    (Older agents read the first fields of a COMMIT and ignore what follows.)"""
    if group is None:
        return frame(COMMIT, _U64.pack(number))
    if segment is None:
        return frame(COMMIT, _COMMIT.pack(number, len(group), zlib.crc32(group)))
    return frame(COMMIT, _COMMIT_TAGGED.pack(number, len(group), zlib.crc32(group), segment))


def commit_segment(commit: Entry) -> int | None:
    """The segment a COMMIT entry was written for; None for the older forms that do not say."""
    if len(commit.body) < _COMMIT_TAGGED.size:
        return None
    return int(_COMMIT_TAGGED.unpack_from(commit.body, 0)[3])


def _commit_covers(buf: memoryview, group_start: int, commit: Entry) -> bool:
    """Whether `commit` closes exactly the bytes from `group_start` to itself, as they were written."""
    if len(commit.body) < _COMMIT.size:
        return True  # the older form: frames are checked one by one, the group as a whole is not
    length: int
    crc: int
    _number, length, crc = _COMMIT.unpack_from(commit.body, 0)
    if length != commit.offset - group_start:
        return False
    return zlib.crc32(buf[group_start : commit.offset]) == crc


@dataclass(frozen=True)
class Entry:
    kind: bytes
    offset: int  # of the frame in its file
    length: int  # of the whole frame
    body: memoryview


@dataclass
class Scan:
    """What a segment file holds: its committed groups, and where it stopped making sense."""

    groups: list[list[Entry]]
    end: int  # offset just after the last COMMIT: everything after it was never committed
    damaged: list[tuple[int, int]]  # byte ranges that did not decode, followed by committed groups
    header_ok: bool = True
    stale: bool = False  # stopped at a COMMIT of another segment: the file's earlier life follows
    untagged: bool = False  # holds COMMITs that do not name their segment (older agents' forms)


def _checked(buf: memoryview, pos: int) -> memoryview | None:
    """The kind and body of the frame at `pos` if it checks out (sync, length, CRC), else None."""
    if pos + FRAME_OVERHEAD > len(buf):
        return None
    sync, length, crc = _FRAME.unpack_from(buf, pos)
    end = pos + _FRAME.size + length
    if sync != SYNC or length < 1 or end > len(buf):
        return None
    data = buf[pos + _FRAME.size : end]
    return data if zlib.crc32(data) == crc else None


def _entry_at(buf: memoryview, pos: int) -> Entry | None:
    data = _checked(buf, pos)
    if data is None:
        return None
    return Entry(bytes(data[:1]), pos, _FRAME.size + len(data), data[1:])


def read_record(data: bytes | memoryview) -> tuple[RecordFields, bytes]:
    """One RECORD entry read back from where it was written, and its payload; ValueError if it does
    not check out. (No Entry in between: this is the per-record cost of draining a backlog.)"""
    checked = _checked(memoryview(data), 0)
    if checked is None:
        raise ValueError("spool entry does not check out (damaged on disk)")
    if checked[0] != RECORD[0]:
        raise ValueError("spool entry is not a record")
    body = checked[1:]
    fields = decode_record(body)
    return fields, bytes(body[fields.payload_at :])


def _resync(buf: memoryview, pos: int) -> int | None:
    """The offset of the next well-formed entry after `pos` (-1: from the start), or None."""
    raw = buf.obj if isinstance(buf.obj, bytes | bytearray) else bytes(buf)
    find = raw.find
    start = pos + 1
    while (start := find(SYNC, start)) != -1:
        if _entry_at(buf, start) is not None:
            return start
        start += 1
    return None


def scan(data: bytes, segment: int | None = None) -> Scan:
    """Split a segment's bytes into committed groups; a group counts only with its COMMIT entry.
    Given the file's segment number, the scan ends at a COMMIT written for another segment."""
    buf = memoryview(data)
    stale = untagged = False
    header_ok = buf[:HEADER_SIZE] == MAGIC
    groups: list[list[Entry]] = []
    damaged: list[tuple[int, int]] = []
    group: list[Entry] = []
    group_start = pos = end = HEADER_SIZE
    if not header_ok:  # a damaged header: what follows may still decode
        first = _resync(buf, -1)
        if first is None:
            return Scan([], 0, [], header_ok=False)
        group_start = pos = first
    while pos < len(buf):
        entry = _entry_at(buf, pos)
        if entry is None:
            after = _resync(buf, pos)
            if after is None:
                break  # nothing decodes after this point: a torn tail (or a damaged end)
            damaged.append((group_start, after))  # the group around the damage is lost as a whole
            group, group_start = [], after
            pos = after
            continue
        pos += entry.length
        if entry.kind == COMMIT:
            written_for = commit_segment(entry)
            if written_for is None:
                untagged = True
            elif segment is not None and written_for != segment:
                stale = True  # the recycled file's earlier life: nothing from here on is this segment's
                break
            if _commit_covers(buf, group_start, entry):
                groups.append(group)
                end = pos
            else:  # a group with a hole (part of a torn overwrite, or damage): never committed
                damaged.append((group_start, pos))
            group, group_start = [], pos
        else:
            group.append(entry)
    # damage counts only when committed groups follow it; otherwise it is the torn tail
    damaged = [(a, b) for a, b in damaged if b < end]
    return Scan(groups, end, damaged, header_ok, stale, untagged)


def iter_entries(groups: list[list[Entry]]) -> Iterator[Entry]:
    for group in groups:
        yield from group
