"""Who may hold the status page's connections, and for how long.

A phone at the pole must get the page even while someone is being a nuisance on the same network:

- **Total deadline for the request head.** A connection has `head_timeout_s` to deliver its request
  line and headers, however it trickles them (a socket timeout alone restarts with every byte, so
  a client sending one header line every few seconds held its slot for minutes). Past the deadline
  the server shuts the socket down, which also ends keep-alive connections left idle.
- **Connections per client address** are capped (IPv6 clients by their /64, which one host gets).
- **Two pools.** Connections still sending their head, or refused, live in the *head* pool; when it
  is full the oldest is evicted rather than the newcomer refused, so a crowd of slow clients cannot
  keep a new one out. Only a request that passed the access check takes a *serving* slot, so
  unauthenticated clients can never crowd out authenticated ones.
- **Failed token attempts** are throttled per address: a few, then 429 until the budget refills.

Pure bookkeeping with one lock; the server calls it from its accept loop, its per-connection threads
and `service_actions` (the reaper, run by `serve_forever` every poll interval).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

HEAD, WAITING, SERVING = "head", "waiting", "serving"
THROTTLE_BURST = 5  # wrong tokens an address may try at once
THROTTLE_REFILL_S = 12.0  # then one more every this many seconds (5 a minute)
THROTTLE_ADDRESSES = 1024  # addresses remembered (oldest forgotten first): bounded memory


def client_key(host: str) -> str:
    """The address a cap applies to: IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 by its /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(eq=False)
class Ticket:
    """One admitted connection."""

    sock: Any
    key: str
    admitted: float
    state: str = HEAD
    deadline: float | None = None
    cut: bool = False  # shut down by the server (deadline passed or evicted)


@dataclass
class GuardStats:
    refused_per_address: int = 0  # connections refused: that address already had its share
    refused_busy: int = 0  # connections or requests refused: every slot taken
    cut_slow: int = 0  # connections shut down for not finishing their head in time
    evicted: int = 0  # connections sending a head shut down to make room for a newer one
    throttled: int = 0  # requests answered 429 after too many wrong tokens

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class ConnectionGuard:
    max_serving: int
    max_per_address: int
    head_timeout_s: float
    stats: GuardStats = field(default_factory=GuardStats)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._tickets: dict[Any, Ticket] = {}
        self._max_head = max(4, self.max_serving)  # connections reading a head (or being refused)
        self._max_total = self._max_head + self.max_serving + 8  # threads, whatever happens
        self._failures: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    # -- connections --------------------------------------------------------------------------------
    def admit(self, sock: Any, host: str) -> Ticket | None:
        """A new connection: its ticket, or None (answer 503 and close). May evict the oldest
        connection still sending its head."""
        key = client_key(host)
        now = time.monotonic()
        victim: Ticket | None = None
        with self._lock:
            mine = sum(1 for t in self._tickets.values() if t.key == key and not t.cut)
            if mine >= self.max_per_address:
                self.stats.refused_per_address += 1
                return None
            if len(self._tickets) >= self._max_total:
                self.stats.refused_busy += 1
                return None
            heads = [t for t in self._tickets.values() if t.state == HEAD and not t.cut]
            if len(heads) >= self._max_head:
                victim = min(heads, key=lambda t: t.admitted)
                victim.cut = True
                self.stats.evicted += 1
            ticket = Ticket(sock, key, now, deadline=now + self.head_timeout_s)
            self._tickets[sock] = ticket
        if victim is not None:
            _shut(victim.sock)
        return ticket

    def ticket(self, sock: Any) -> Ticket | None:
        with self._lock:
            return self._tickets.get(sock)

    def reading(self, ticket: Ticket) -> None:
        """The connection waits for (the next) request head: the deadline starts now."""
        with self._lock:
            if ticket.state == SERVING:
                return
            ticket.state, ticket.deadline = HEAD, time.monotonic() + self.head_timeout_s

    def head_done(self, ticket: Ticket) -> bool:
        """The head arrived in time; False when the connection was cut meanwhile (drop the request)."""
        with self._lock:
            if ticket.cut:
                return False
            ticket.state, ticket.deadline = WAITING, None
            return True

    def serve(self, ticket: Ticket) -> bool:
        """An authorised request takes a serving slot; False when they are all taken (answer 503)."""
        with self._lock:
            serving = sum(1 for t in self._tickets.values() if t.state == SERVING)
            if serving >= self.max_serving:
                self.stats.refused_busy += 1
                return False
            ticket.state = SERVING
            return True

    def served(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.state == SERVING:
                ticket.state = WAITING

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._tickets.pop(ticket.sock, None)

    def reap(self) -> None:
        """Shut down every connection past its head deadline (their threads then see end of input)."""
        now = time.monotonic()
        late: list[Ticket] = []
        with self._lock:
            for ticket in self._tickets.values():
                if ticket.deadline is not None and now >= ticket.deadline and not ticket.cut:
                    ticket.cut = True
                    late.append(ticket)
            self.stats.cut_slow += len(late)
        for ticket in late:
            _shut(ticket.sock)

    def counts(self) -> dict[str, int]:
        with self._lock:
            states = [t.state for t in self._tickets.values()]
        return {state: states.count(state) for state in (HEAD, WAITING, SERVING)}

    # -- failed tokens ------------------------------------------------------------------------------
    def throttled(self, host: str) -> float | None:
        """Seconds until `host` may try a token again, or None when it may now."""
        key = client_key(host)
        with self._lock:
            tokens = self._refilled(key, time.monotonic())
            if tokens >= 1.0:
                return None
            self.stats.throttled += 1
            return (1.0 - tokens) * THROTTLE_REFILL_S

    def failed(self, host: str) -> None:
        """`host` presented a wrong token."""
        key = client_key(host)
        now = time.monotonic()
        with self._lock:
            tokens = self._refilled(key, now)
            self._failures[key] = (max(0.0, tokens - 1.0), now)
            self._failures.move_to_end(key)
            while len(self._failures) > THROTTLE_ADDRESSES:
                self._failures.popitem(last=False)

    def _refilled(self, key: str, now: float) -> float:
        tokens, at = self._failures.get(key, (float(THROTTLE_BURST), now))
        return min(float(THROTTLE_BURST), tokens + (now - at) / THROTTLE_REFILL_S)


def _shut(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


# -- the Host header (DNS rebinding) ------------------------------------------------------------------
def own_names() -> frozenset[str]:
    """Names this machine answers to without configuration: localhost and its own host name."""
    name = socket.gethostname().lower().rstrip(".")
    short = name.split(".", 1)[0]
    return frozenset({"localhost", "ip6-localhost", name, short, f"{short}.local"} - {""})


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """Whether a request's Host header names this node: an IP address, one of `names`, or no header.

    A web page elsewhere can point a name it controls at this node's address (DNS rebinding), and
    the browser then sends that name; refusing unknown names keeps such pages from reading the status
    page through a visitor's browser."""
    if header is None:
        return True  # HTTP/1.0 scripts; browsers always send one
    host = header.strip().lower()
    if host.startswith("["):  # [v6]:port
        literal, _, _ = host[1:].partition("]")
        return _is_ip(literal)
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    host = host.rstrip(".")
    return bool(host) and (_is_ip(host) or host in names)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
