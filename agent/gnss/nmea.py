"""NMEA 0183 framing: bytes from a receiver in, checksum-verified sentences out.

Pure protocol code, no I/O, so the same framer serves a serial port, a log replay and the fuzzer.
Receivers in the field send empty fields, lower-case checksums, NUL bytes, sentences cut in half or
glued onto the next one, and proprietary sentences; the framer splits on `$` as well as on line
ends (which recovers glued sentences the way gpsd's packetizer does), accepts only sentences with a
valid two-digit XOR checksum followed by a line end (a sentence without a checksum is rejected, as
gpsd does; one interrupted by the next `$` was cut short, whatever its checksum says), and counts
everything it throws away instead of raising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Longest sentence accepted, `$` to checksum. NMEA 0183 says 82 with CR LF; real receivers go far
# beyond it (MediaTek's $PMTKCHN is over 200), so allow generous room before calling it garbage.
MAX_SENTENCE = 256

_HEX = frozenset(b"0123456789ABCDEFabcdef")
_TAG = re.compile(r"^[A-Z0-9]{2,}$")


@dataclass(frozen=True)
class Sentence:
    """One checksum-verified sentence. `fields[0]` is the tag (e.g. GPGGA), the rest its data."""

    raw: str  # from `$` to the checksum, without the line end
    fields: tuple[str, ...]

    @property
    def tag(self) -> str:
        return self.fields[0]

    @property
    def proprietary(self) -> bool:
        """$P… sentences (PMTK, PQGSV, POLYN…) belong to one vendor; the fix logic ignores them."""
        return self.tag.startswith("P")

    @property
    def talker(self) -> str:
        return "" if self.proprietary else self.tag[:2]

    @property
    def kind(self) -> str:
        """Sentence type without the talker: GGA, RMC, … ('' for proprietary ones)."""
        return "" if self.proprietary else self.tag[2:]


@dataclass
class FramerStats:
    """What the framer saw, for telemetry and `agent gps replay`."""

    good: int = 0  # valid checksum (including proprietary sentences)
    bad_checksum: int = 0  # a `*HH` that does not match the bytes
    no_checksum: int = 0  # printable sentence without `*HH` (rejected, as gpsd does)
    garbage: int = 0  # fragments that are not a sentence at all (cut, NUL bytes, noise)
    garbage_bytes: int = 0
    proprietary: int = 0  # subset of good

    def as_dict(self) -> dict[str, int]:
        return {
            "good": self.good,
            "bad_checksum": self.bad_checksum,
            "no_checksum": self.no_checksum,
            "garbage": self.garbage,
            "garbage_bytes": self.garbage_bytes,
            "proprietary": self.proprietary,
        }


def checksum(body: bytes | str) -> int:
    """XOR of the bytes between `$` and `*`."""
    data = body.encode("ascii") if isinstance(body, str) else body
    value = 0
    for b in data:
        value ^= b
    return value


def build(body: str) -> str:
    """A complete sentence (`$body*HH`) for emulators and tests."""
    return f"${body}*{checksum(body):02X}"


@dataclass
class NmeaFramer:
    """Feed it bytes as they arrive; it returns the sentences completed by them.

    A candidate starts at `$` and ends at CR or LF; one cut short by the next `$` (a glued
    sentence) is garbage, and the `$` starts a new candidate. Bytes outside a candidate are garbage
    (counted once per run). Memory is bounded by MAX_SENTENCE whatever the input.
    """

    stats: FramerStats = field(default_factory=FramerStats)
    _candidate: bytearray = field(default_factory=bytearray)
    _in_candidate: bool = False
    _overlong: bool = False
    _junk: int = 0  # length of the current run of bytes outside any candidate

    def feed(self, data: bytes) -> list[Sentence]:
        out: list[Sentence] = []
        for b in data:
            if b == 0x24:  # '$'
                self._end_junk()
                if self._in_candidate:
                    self._abandon()
                self._in_candidate = True
                self._overlong = False
                self._candidate.clear()
                self._candidate.append(b)
            elif b in (0x0A, 0x0D):
                if self._in_candidate:
                    self._finish(out)
                else:
                    self._end_junk()
            elif self._in_candidate:
                if self._overlong:
                    self.stats.garbage_bytes += 1
                elif len(self._candidate) >= MAX_SENTENCE:
                    self._overlong = True
                    self.stats.garbage += 1
                    self.stats.garbage_bytes += len(self._candidate) + 1
                    self._candidate.clear()
                else:
                    self._candidate.append(b)
            else:
                self._junk += 1
        return out

    def flush(self) -> None:
        """End of input (end of a log, port closed): an unterminated sentence is garbage."""
        if self._in_candidate:
            self._abandon()
        self._end_junk()

    def _abandon(self) -> None:
        self._in_candidate = False
        if not self._overlong:
            self.stats.garbage += 1
            self.stats.garbage_bytes += len(self._candidate)
        self._overlong = False
        self._candidate.clear()

    def _end_junk(self) -> None:
        if self._junk:
            self.stats.garbage += 1
            self.stats.garbage_bytes += self._junk
            self._junk = 0

    def _finish(self, out: list[Sentence]) -> None:
        self._in_candidate = False
        if self._overlong:
            self._overlong = False
            return
        sentence = self._judge(bytes(self._candidate))
        self._candidate.clear()
        if sentence is not None:
            out.append(sentence)

    def _judge(self, cand: bytes) -> Sentence | None:
        stats = self.stats
        if any(b < 0x20 or b > 0x7E for b in cand):
            stats.garbage += 1
            stats.garbage_bytes += len(cand)
            return None
        star = cand.find(b"*")
        if star < 0:
            if len(cand) > 6 and _TAG.fullmatch(cand[1:].split(b",", 1)[0].decode("ascii")):
                stats.no_checksum += 1
            else:
                stats.garbage += 1
                stats.garbage_bytes += len(cand)
            return None
        body, tail = cand[1:star], cand[star + 1 :]
        if len(tail) != 2 or tail[0] not in _HEX or tail[1] not in _HEX or not body:
            stats.garbage += 1
            stats.garbage_bytes += len(cand)
            return None
        if checksum(body) != int(tail, 16):
            stats.bad_checksum += 1
            return None
        text = body.decode("ascii")
        fields = tuple(text.split(","))
        if not _TAG.fullmatch(fields[0]):
            stats.garbage += 1
            stats.garbage_bytes += len(cand)
            return None
        stats.good += 1
        sentence = Sentence(raw=cand.decode("ascii"), fields=fields)
        if sentence.proprietary:
            stats.proprietary += 1
        return sentence


def strip_comments(data: bytes) -> bytes:
    """Drop `#` comment lines of a captured log (gpsd's test logs start with a header), keep every
    other byte as captured (CR LF, NUL)."""
    return b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"#"))
