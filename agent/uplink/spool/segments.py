"""The spool's files: a directory of append-only segments. No threads, no policy.

Why a log and not a database: on an SD card every commit costs at least one flash page, and a
database rewrites its pages twice (journal and table) plus an index for each record and again when
it is deleted. Here a commit is one `write` of the new entries and one `fdatasync`; an
acknowledgement is eight bytes in the next commit; a segment whose records have all left is
unlinked whole. Bytes written per accepted record stay close to the record itself
(bench/wear.py measures it).

Why segments are zero-filled ahead of the log: on ext4 (and any journaling file system) an
`fdatasync` of a file that grew must also commit its new size and extents through the journal (a
descriptor block, the inode's block and a commit block) on top of the data page. Measured on the
busy street (bench/wear.py), that made the device write 22× an event's payload (15.8 kB). So a segment's
blocks are allocated and *written* (zeros, never `fallocate`'s unwritten extents, whose conversion
is journaled too) `PREALLOCATE_BYTES` at a time ahead of the log's end, with the same write and
fdatasync as the commit that needs them; every other commit overwrites blocks that already exist
and its fdatasync writes its data pages alone (the inode's new mtime goes with the file system's
next periodic journal commit, which fdatasync does not wait for). The zeros cost each segment's
bytes once, in large sequential writes. Measured on ext4 (a loop device): one commit of a ~700-byte
event a second costs the device 7.1 kB instead of 19.8 kB, and an event on the busy street 6.2 kB
with the zeros counted (8.7× its payload). What is left is the data page (4 kB; 1.2 pages a commit)
and ext4's periodic commit of the new timestamps (about 2 kB a commit at one a second, `lazytime`
or not), which no file layout avoids; only fewer commits would.

The end of the log is therefore not the end of the file: it is just after the last COMMIT entry
whose group checks out (codec.py: a zero-filled stretch holds no entry, and a COMMIT carries the
length and CRC of its group, so pages of a torn overwrite that reached the card out of order do not
make a group count). At start, a torn tail (non-zero bytes after the last commit) is overwritten
with zeros and synced, never truncated, and the next commit is written where the log ends.

Committed bytes are never rewritten. The newest segment is the active one; when it is full, it is
cut to its log (so finished segments look as older agents wrote them, and an agent rolled back to an
older release reads them) and a new one starts with a STATE entry (counters, drop tallies,
metadata), so that the newest segment alone carries everything a restart needs even after older
segments are gone. What the spool takes on disk (`disk_bytes`, its budget) is the files' sizes,
zero-filled ends and spares included.

Why retired segments are recycled: zero-filling writes every byte of the log twice, once as zeros
and once as entries, which under sustained load is most of what the spool costs the card (bench/
uplink.py: 2.2× the payload with fresh files, 1.4× with recycled ones). So a segment none of whose
records waits any more is renamed to a spare (`SPARES` at most), and the next segment is that file,
overwritten in place from its start: its blocks exist, no zeros are written and no fdatasync
journals a new size. Past the new log's end lie the entries of the file's earlier life, valid
groups of another segment; every COMMIT therefore names the segment it was written for, and a scan
ends at one naming another (codec.py). Only files whose every COMMIT names its segment become spares:
an older agent's entries would not say whose they are. Spares live as long as the process: they are
deleted at start and at a clean stop, when a recycled active segment is also cut to its log, so that
an agent rolled back to an older release (which reads a segment to its end) finds no earlier life
to read. (After a power cut, the same agent reads the directory next; a rollback right then would
have the older release send some long-delivered records again, which consumers deduplicate by id.)
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.uplink.spool import codec

log = logging.getLogger(__name__)

SEGMENT_NAME = re.compile(r"seg-(\d{10})\.log")
PAGE = 4096
# Zeros written ahead of the log's end at a time: one journaled size change per this many bytes of
# commits (about 900 commits of a busy street's events) instead of one per commit
PREALLOCATE_BYTES = 1024 * 1024
SPARE_NAME = re.compile(r"spare-(\d{10})\.log")
SPARES = 1  # retired segment files kept for the next new segment


class SpoolUnavailable(Exception):
    """The spool cannot be used for a reason other than damage (locked by another process, no
    permission, disk full at start); the files may be fine, so they are left alone."""


@dataclass
class Segment:
    number: int
    path: Path
    fd: int
    size: int  # where the log ends: the next commit is written here
    allocated: int  # the file's size: blocks written (zeros, or a recycled file's old entries, past `size`)
    tagged: bool = True  # every COMMIT in the file names its segment: it may be recycled
    stale: bool = False  # a recycled file: its earlier life's entries lie past `size`

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)


@dataclass
class Opened:
    """What was on disk: committed groups per segment, oldest first, and what had to be set aside."""

    groups: list[tuple[int, list[list[codec.Entry]]]] = field(default_factory=list)
    set_aside: list[Path] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    torn_bytes: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentLog:
    """Append-only segments in one directory, written in committed groups."""

    def __init__(self, directory: Path, *, segment_bytes: int) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.segments: dict[int, Segment] = {}
        self.spares: list[Path] = []  # retired segment files, for the next segments to overwrite
        self._lock_fd: int | None = None
        self.bytes_written = 0  # what this process appended (entries and headers): SD wear accounting
        self.zero_filled = 0  # zeros written ahead of the log (each segment's bytes once)
        self.syncs = 0

    # -- opening ------------------------------------------------------------------------------------
    def open(self) -> Opened:
        """Lock the directory, read every segment, cut a torn tail, set damaged segments aside."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            raise SpoolUnavailable(f"cannot open spool {self.directory}: {exc}") from None
        opened = Opened()
        for path in self.directory.iterdir():
            if SPARE_NAME.fullmatch(path.name):  # a spare of an earlier run: kept only while running
                path.unlink(missing_ok=True)
        numbers = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := SEGMENT_NAME.fullmatch(p.name))
        )
        for index, number in enumerate(numbers):
            path = self.directory / f"seg-{number:010d}.log"
            data = path.read_bytes()
            scan = codec.scan(data, number)
            last = index == len(numbers) - 1
            # what follows the last commit that is neither the zero-filled end nor a recycled file's
            # earlier life: a torn commit or damage
            tail = 0 if scan.stale else max(scan.end, len(data.rstrip(b"\0"))) - scan.end
            if last and not scan.groups and (scan.stale or not data.strip(b"\0")):
                # created (or recycled), but its first commit never reached the disk (a power cut while
                # a new segment started): it never held anything of its own, and cannot be appended to
                path.unlink()
                _fsync_dir(self.directory)
                continue
            if scan.damaged or not scan.header_ok or (not last and tail):
                # damage in the middle of a segment, or an older segment that does not end cleanly:
                # keep what still decodes, move the file aside for forensics (never delete it)
                aside = self._set_aside(path)
                opened.set_aside.append(aside)
                opened.damage.append(
                    f"{path.name}: {'a damaged header, ' if not scan.header_ok else ''}{len(scan.damaged)} "
                    f"damaged range(s), {tail} undecodable byte(s) at the end; moved to "
                    f"{aside.name}"
                )
                opened.groups.append((number, scan.groups))
                continue
            segment = self._open_segment(number, path, size=scan.end)
            segment.tagged, segment.stale = not scan.untagged, scan.stale
            if tail:  # the torn tail of the active segment: never committed; zeros, like the rest
                opened.torn_bytes += tail
                try:
                    _write_all(segment.fd, bytes(tail), scan.end)
                    os.fdatasync(segment.fd)
                except OSError as exc:
                    os.close(segment.fd)
                    raise SpoolUnavailable(f"cannot clear the torn end of {path}: {exc}") from None
            self.segments[number] = segment
            opened.groups.append((number, scan.groups))
        return opened

    def _lock(self) -> None:
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolUnavailable(
                f"spool {self.directory} is in use by another process (is another agent using the same "
                "state directory?)"
            ) from None
        self._lock_fd = fd

    def _set_aside(self, path: Path) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
        shutil.move(path, aside)
        return aside

    def _open_segment(self, number: int, path: Path, *, size: int) -> Segment:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return Segment(number, path, fd, size, os.fstat(fd).st_size)

    # -- writing ------------------------------------------------------------------------------------
    @property
    def active(self) -> Segment | None:
        return self.segments[max(self.segments)] if self.segments else None

    def needs_new_segment(self) -> bool:
        active = self.active
        return active is None or active.size >= self.segment_bytes

    def start_segment(self, first_group: bytes, commit_number: int) -> Segment:
        """A new active segment beginning with `first_group` (a STATE snapshot) and its COMMIT, in a
        spare (a retired segment's file, overwritten in place: no zeros to write ahead) if there is one."""
        previous = self.active
        if previous is not None and previous.allocated > previous.size:
            self._cut_to_log(previous)
        number = max(self.segments, default=0) + 1
        path = self.directory / f"seg-{number:010d}.log"
        recycled = False
        while self.spares and not recycled:
            spare = self.spares.pop()
            try:
                os.rename(spare, path)
                recycled = True
            except OSError as exc:
                log.warning("spool: cannot reuse %s (%s)", spare.name, exc)
                with contextlib.suppress(OSError):
                    spare.unlink()
        segment = self._open_segment(number, path, size=0)
        segment.stale = recycled and segment.allocated > 0
        self.segments[number] = segment
        self.append([codec.MAGIC + first_group, codec.encode_commit(commit_number, first_group, number)])
        _fsync_dir(self.directory)
        return segment

    def _cut_to_log(self, segment: Segment) -> None:
        """A full segment gives back its zero-filled end (one size change per segment), so a finished
        segment is its log alone, as older agents wrote them (after a rollback they read it as before)."""
        try:
            os.ftruncate(segment.fd, segment.size)
            os.fdatasync(segment.fd)
        except OSError as exc:  # the zeros stay: harmless, this agent reads them as the end of the log
            log.warning("spool: cannot cut the zero-filled end of %s (%s)", segment.path.name, exc)
            return
        segment.allocated = segment.size
        segment.stale = False

    def append(self, chunks: list[bytes]) -> tuple[Segment, int]:
        """Write `chunks` where the active segment's log ends in one write, then fdatasync; returns
        the segment and the offset of the first byte. When the commit reaches past the zero-filled
        blocks, the same write zero-fills the next `PREALLOCATE_BYTES` too. On failure the file is cut
        back to where the log ended, so a failed commit leaves nothing half-written behind it."""
        segment = self.active
        assert segment is not None
        data = b"".join(chunks)
        start = segment.size
        end = start + len(data)
        allocated = segment.allocated
        if end > allocated:
            allocated = self._preallocation(segment, end)
            data += bytes(allocated - end)
        try:
            _write_all(segment.fd, data, start)
            os.fdatasync(segment.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(segment.fd, start)
                segment.allocated, segment.stale = start, False
            raise
        self.zero_filled += allocated - max(end, segment.allocated)
        segment.size, segment.allocated = end, allocated
        self.bytes_written += end - start
        self.syncs += 1
        return segment, start

    def _preallocation(self, segment: Segment, end: int) -> int:
        """The file size to zero-fill to for a commit ending at `end`: `PREALLOCATE_BYTES` past the
        blocks already there, no further than the segment's size unless the commit itself is."""
        target = min(segment.allocated + PREALLOCATE_BYTES, self.segment_bytes)
        return -(-max(end, target) // PAGE) * PAGE

    def retire(self, number: int) -> None:
        """Let go of a segment none of whose records is still waiting (never the active one): its
        file becomes a spare for the next new segment, or is unlinked. Only a file whose every COMMIT
        names its segment is kept (an older agent's would read as this segment's after reuse)."""
        segment = self.segments.pop(number)
        os.close(segment.fd)
        if segment.tagged and len(self.spares) < SPARES:
            spare = self.directory / f"spare-{number:010d}.log"
            try:
                os.rename(segment.path, spare)
                self.spares.append(spare)
                return
            except OSError as exc:
                log.warning("spool: cannot keep %s as a spare (%s)", segment.path.name, exc)
        segment.path.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """What the segments take on disk: their files, zero-filled ends and spares included."""
        spares = 0
        for spare in self.spares:
            with contextlib.suppress(OSError):
                spares += spare.stat().st_size
        return spares + sum(max(s.size, s.allocated) for s in self.segments.values())

    def close(self) -> None:
        """Close the files. A recycled active segment is cut to its log first and the spares go, so
        that no entry of an earlier life is left behind for an agent rolled back to an older release
        (which reads a segment to its end)."""
        active = self.active
        if active is not None and active.stale:
            self._cut_to_log(active)
        for spare in self.spares:
            with contextlib.suppress(OSError):
                spare.unlink()
        self.spares.clear()
        for segment in self.segments.values():
            with contextlib.suppress(OSError):
                os.close(segment.fd)
        self.segments.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _write_all(fd: int, data: bytes, offset: int) -> None:
    written = os.pwrite(fd, data, offset)
    if written != len(data):
        raise OSError(f"short write ({written} of {len(data)} bytes)")


def read_only_groups(directory: Path) -> list[tuple[int, list[list[codec.Entry]]]]:
    """Committed groups of a spool another process may be writing (for `agent spool stats`)."""
    found = []
    for path in sorted(directory.glob("seg-*.log")):
        match = SEGMENT_NAME.fullmatch(path.name)
        if match is None:
            continue
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # retired while we looked
        number = int(match.group(1))
        found.append((number, codec.scan(data, number).groups))
    return found
