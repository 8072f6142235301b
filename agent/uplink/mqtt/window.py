"""The publish window of one connection: what is in flight, how much more may go, and whether the
broker has gone quiet."""

from __future__ import annotations

from dataclasses import dataclass

from agent.uplink.meter import LinkMeter
from agent.uplink.spool import Record

STALL_S = 30.0  # no PUBACK for this long (or two keepalives): the connection is dead, start another
RETRY_AFTER_S = 5.0  # a record the broker turned down for now waits this long before it goes again
UNMEASURED_ALLOWANCE = 4096  # in flight before the link has been measured


@dataclass(slots=True)
class InFlight:
    record: Record
    sent: float  # monotonic
    size: int


class PublishWindow:
    """In-flight publishes of one session, keyed by its packet ids; a new session gets a new window."""

    def __init__(self, limit: int, meter: LinkMeter, *, stall_s: float = STALL_S) -> None:
        self.limit = max(1, limit)
        self.meter = meter
        self.stall_s = stall_s
        self.inflight: dict[int, InFlight] = {}
        self.bytes = 0
        self._cooling: dict[int, float] = {}  # rowid -> monotonic time it may go again

    def __len__(self) -> int:
        return len(self.inflight)

    @property
    def room(self) -> int:
        return self.limit - len(self.inflight)

    @staticmethod
    def allowance(rate: float | None) -> int:
        """Bytes we let sit in flight: about two seconds of the measured link, so a live event never
        queues long behind a backlog already handed to the socket. Before the link is measured (a
        first connection, or one after an outage longer than the meter's window) start small, like
        TCP's slow start: the first PUBACKs measure it within a round trip on a good link."""
        if rate is None:
            return UNMEASURED_ALLOWANCE
        return int(min(1 << 20, max(2048, rate * 2.0)))

    def oldest(self) -> InFlight | None:
        """The first publish still unacknowledged (PUBACKs come in order)."""
        return min(self.inflight.values(), key=lambda f: f.sent, default=None)

    def busy_rowids(self, now: float) -> set[int]:
        """Records not to pick now: in flight, or turned down a moment ago."""
        if self._cooling:
            self._cooling = {r: t for r, t in self._cooling.items() if t > now}
        return {f.record.rowid for f in self.inflight.values()} | set(self._cooling)

    def sent(self, mid: int, record: Record, size: int, now: float) -> None:
        self.inflight[mid] = InFlight(record, now, size)
        self.bytes += size

    def settle(self, mid: int) -> InFlight | None:
        """The PUBACK for `mid` arrived; None when it was not one of ours (a status message)."""
        flights = self.settle_all([mid])
        return flights[0] if flights else None

    def settle_all(self, mids: list[int]) -> list[InFlight]:
        """PUBACKs for `mids` arrived: what they settled, in order (mids not ours are skipped)."""
        pop = self.inflight.pop
        flights = [flight for mid in mids if (flight := pop(mid, None)) is not None]
        self.bytes -= sum(f.size for f in flights)
        return flights

    def cool_down(self, rowid: int, now: float) -> None:
        self._cooling[rowid] = now + RETRY_AFTER_S

    def stalled(self, now: float, keepalive_s: float) -> bool:
        if not self.inflight:
            return False
        oldest = min(f.sent for f in self.inflight.values())
        return now - oldest > max(self.stall_s, 2.0 * keepalive_s)

    def abandon(self, now: float) -> int:
        """The connection ended: nothing in flight was acknowledged, so all of it goes again on the
        next connection (same ids; the consumer deduplicates). Returns how many."""
        count = len(self.inflight)
        self.inflight.clear()
        self.bytes = 0
        self.meter.busy(0, now)
        return count
