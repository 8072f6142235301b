"""The AT protocol, apart from any I/O: bytes from the modem in, URCs and command results out.

It knows V.250/27.007 framing: responses end with a final result code (`OK`, `ERROR`,
`+CME ERROR: n`, `NO CARRIER`…), the modem may echo the command, and unsolicited result codes
(`+CEREG: 1`, `RDY`, `+QIURC: …`) can arrive at any moment, including between a command and its
`OK`. Being I/O-free, the fuzzer and unit tests drive it directly; `at.AtEngine` runs it on a port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_LINE = 2048  # a longer "line" is noise on the wire, not a response
SETTLE_S = 1.0  # how long the next command waits for a timed-out one to finish answering

# Final result codes. CONNECT ends a command successfully (data mode follows).
_FINAL_OK = ("OK", "CONNECT")
_FINAL_ERROR_EXACT = {"ERROR", "NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER", "ABORTED"}
_FINAL_ERROR_PREFIX = ("+CME ERROR:", "+CMS ERROR:", "COMMAND NOT SUPPORT")

# Unsolicited result codes worth routing to listeners (anything unknown outside a command is too).
URC_PREFIXES = (
    "+CREG:",
    "+CGREG:",
    "+CEREG:",
    "+C5GREG:",
    "+CPIN:",
    "+CFUN:",
    "+CGEV:",
    "+CMTI:",
    "+CMT:",
    "+CDS:",
    "+CUSD:",
    "+CRING:",
    "+CLIP:",
    "+CTZV:",
    "+CTZE:",
    "+CTZU:",
    "+QIURC:",
    "+QIND:",
    "+QUSIM:",
    "+QGPSURC:",
    "+QNITZ:",
    "+QSIMSTAT:",
    "+SIMCARD:",
    "+CPSI:",
    "+PDP:",
)
URC_EXACT = frozenset(
    {"RDY", "POWERED DOWN", "NORMAL POWER DOWN", "RING", "SMS DONE", "PB DONE", "SMS Ready", "Call Ready"}
)
_REG_PREFIXES = ("+CREG:", "+CGREG:", "+CEREG:", "+C5GREG:")
# A solicited registration read answers `<n>,<stat>…` with two bare integers; the URC does not.
_REG_SOLICITED = re.compile(r"^\+C\w*REG:\s*\d+\s*,\s*\d+")

# 3GPP TS 27.007 §9.2 codes a technician will meet, for messages that say what is wrong.
CME_ERRORS = {
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    17: "SIM PIN2 required",
    18: "SIM PUK2 required",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed - emergency calls only",
    100: "unknown",
    107: "GPRS services not allowed",
    111: "PLMN not allowed",
    112: "location area not allowed",
    113: "roaming not allowed in this location area",
    148: "unspecified GPRS error",
    149: "PDP authentication failure",
}

# How long a command may legitimately take (vendor manuals' "maximum response time"). A network
# scan or attach can take minutes; a plain query answers in well under a second.
_TIMEOUTS: tuple[tuple[str, float], ...] = (
    ("AT+COPS=?", 180.0),
    ("AT+COPS=", 180.0),
    ("AT+CGATT=", 140.0),
    ("AT+CGACT=", 150.0),
    ("AT+CFUN=", 15.0),
    ("AT+QPOWD", 60.0),
    ("AT+CRESET", 30.0),
    ("AT+CPIN=", 5.0),
    ("AT+QGPS", 10.0),
    ("AT+CGPS", 10.0),
    ("AT+QENG", 5.0),
    ("AT+CPSI", 5.0),
)


_SECRET_COMMANDS = re.compile(r"^(AT\+(?:CPIN|CPIN2|CLCK|CPWD|QPINC)=)(.*)$", re.IGNORECASE)


def redact(command: str) -> str:
    """The command as it may appear in logs and errors: PINs and passwords hidden."""
    m = _SECRET_COMMANDS.match(command.strip())
    return f"{m.group(1)}<hidden>" if m else command


def default_timeout(command: str, fallback: float = 5.0) -> float:
    upper = command.upper()
    for prefix, seconds in _TIMEOUTS:
        if upper.startswith(prefix):
            return seconds
    return fallback


def response_prefix(command: str) -> str | None:
    """`AT+CSQ` → `+CSQ:`, `AT+QENG="servingcell"` → `+QENG:`; None for basic commands (ATI, ATE0)."""
    m = re.match(r"^AT([+^$%#][A-Z0-9]+)", command.strip().upper())
    return f"{m.group(1)}:" if m else None


# -- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtResponse:
    command: str
    lines: tuple[str, ...]
    final: str

    @property
    def ok(self) -> bool:
        return self.final.startswith(_FINAL_OK)

    def first(self, prefix: str) -> str | None:
        """The text after `prefix` on the first line that has it (None if absent)."""
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return None

    def all(self, prefix: str) -> list[str]:
        return [line[len(prefix) :].strip() for line in self.lines if line.startswith(prefix)]

    def text(self) -> str:
        """Bare information lines (ATI, AT+CGSN answers), joined."""
        return "\n".join(self.lines)


class AtError(Exception):
    """The modem answered with an error result (ERROR, +CME ERROR, …)."""

    def __init__(self, command: str, final: str, lines: tuple[str, ...] = ()) -> None:
        command = redact(command)
        self.command = command
        self.final = final
        self.lines = lines
        self.code: int | None = None
        self.reason = final
        m = re.match(r"^\+CM[ES] ERROR:\s*(.*)$", final)
        if m:
            detail = m.group(1).strip()[:80]  # the reason is quoted in logs and status
            if detail.isascii() and detail.isdigit() and len(detail) <= 6:
                self.code = int(detail)
                self.reason = CME_ERRORS.get(self.code, f"error {self.code}")
            else:
                self.reason = detail
                for code, text in CME_ERRORS.items():
                    if text.lower() == detail.lower():
                        self.code = code
        super().__init__(f"{command}: {self.reason}")


class AtTimeout(Exception):
    """No final result within the command's timeout: the modem is slow, busy or hung."""


class PortClosed(Exception):
    """The port went away (unplugged, re-enumerated, closed by stop())."""


# -- the pure protocol -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Urc:
    line: str


@dataclass(frozen=True)
class Final:
    response: AtResponse


@dataclass
class ProtocolStats:
    lines: int = 0
    urcs: int = 0
    echoes: int = 0
    late: int = 0  # lines of a command that had already timed out
    garbage_bytes: int = 0  # control bytes, overlong lines
    timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Pending:
    command: str
    prefix: str | None
    lines: list[str] = field(default_factory=list)
    echo_seen: bool = False


class AtProtocol:
    """Bytes from the modem in; `Urc` and `Final` events out. One command is pending at a time."""

    def __init__(self) -> None:
        self.stats = ProtocolStats()
        self._buf = bytearray()
        self._overlong = False
        self._pending: _Pending | None = None
        self._abandoned = False  # a timed-out command may still answer; swallow until its final
        self.abandoned_wait = SETTLE_S

    @property
    def busy(self) -> bool:
        return self._pending is not None

    @property
    def abandoned(self) -> bool:
        """A timed-out command has not sent its final result yet."""
        return self._abandoned

    def begin(self, command: str, prefix: str | None = None) -> None:
        self._pending = _Pending(command=command.strip(), prefix=prefix or response_prefix(command))
        self._abandoned = False

    def abandon(self, waited: float = SETTLE_S) -> None:
        """The pending command timed out after `waited` seconds; whatever it still says is dropped,
        URCs still flow."""
        if self._pending is not None:
            self._pending = None
            self._abandoned = True
            self.abandoned_wait = waited
            self.stats.timeouts += 1

    def reset(self) -> None:
        """The port was reopened: forget partial input and any pending command."""
        self._buf.clear()
        self._overlong = False
        self._pending = None
        self._abandoned = False

    def feed(self, data: bytes) -> list[Urc | Final]:
        events: list[Urc | Final] = []
        for b in data:
            if b in (0x0D, 0x0A):
                if self._overlong:
                    self._overlong = False
                elif self._buf:
                    line = self._buf.decode("utf-8", errors="replace").strip()
                    self._buf.clear()
                    if line:
                        self._line(line, events)
            elif (b < 0x20 and b != 0x09) or b == 0x7F or self._overlong:
                self.stats.garbage_bytes += 1
            elif len(self._buf) >= MAX_LINE:
                self.stats.garbage_bytes += len(self._buf) + 1
                self._buf.clear()
                self._overlong = True
            else:
                self._buf.append(b)
        return events

    def _line(self, line: str, events: list[Urc | Final]) -> None:
        self.stats.lines += 1
        pending = self._pending
        if pending is None:
            if self._abandoned and not is_urc(line):
                # the rest of a timed-out command's answer, up to its final result
                self._abandoned = not is_final(line)
                self.stats.late += 1
                return
            if is_final(line) or line.upper().startswith("AT"):
                self.stats.late += 1
                return
            self.stats.urcs += 1
            events.append(Urc(line))
            return
        if not pending.echo_seen and line.upper() == pending.command.upper():
            pending.echo_seen = True
            self.stats.echoes += 1
            return
        if is_final(line):
            self._pending = None
            events.append(Final(AtResponse(redact(pending.command), tuple(pending.lines), line)))
            return
        if pending.prefix and line.startswith(pending.prefix):
            unsolicited_reg = pending.prefix in _REG_PREFIXES and not _REG_SOLICITED.match(line)
            if unsolicited_reg and pending.command.endswith("?"):
                self.stats.urcs += 1
                events.append(Urc(line))
                return
            pending.lines.append(line)
            return
        if is_urc(line):
            self.stats.urcs += 1
            events.append(Urc(line))
            return
        pending.lines.append(line)


def is_final(line: str) -> bool:
    return line.startswith(_FINAL_OK) or line in _FINAL_ERROR_EXACT or line.startswith(_FINAL_ERROR_PREFIX)


def is_urc(line: str) -> bool:
    return line in URC_EXACT or line.startswith(URC_PREFIXES)
