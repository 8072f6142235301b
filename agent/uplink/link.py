"""A scripted link between the agent and its broker: a userspace TCP proxy that can throttle, delay,
black-hole or cut the connection, driven by a profile (good → outage → brownout → good).

`agent --simulate --link-profile NAME|FILE` puts it in front of the broker so a laptop user can
watch the spool absorb a brownout and drain; the fault tests drive the same proxy. (Kernel netem is
not available on every machine; this needs nothing but sockets.)
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.lifecycle import BackgroundLoop, remaining, resolve_deadline

log = logging.getLogger(__name__)

Mode = Literal["up", "blackhole", "down"]


@dataclass(frozen=True)
class LinkState:
    """up: bytes flow (optionally throttled/delayed); blackhole: nothing gets through but sockets stay
    open (a dead radio link TCP cannot see): what is sent meanwhile is held, as TCP keeps retransmitting
    it, and arrives in order if the link comes back before either end gives up (never a stream with a
    hole in it, which no real network delivers); down: connections are reset (what was held is lost)
    and refused."""

    mode: Mode = "up"
    rate_bps: float | None = None  # bytes per second each way; None = unlimited
    latency_s: float = 0.0

    def describe(self) -> str:
        if self.mode != "up":
            return self.mode
        parts = ["up"]
        if self.rate_bps:
            parts.append(f"{self.rate_bps / 1000:g} kB/s")
        if self.latency_s:
            parts.append(f"+{self.latency_s * 1000:.0f} ms")
        return " ".join(parts)


class _TokenBucket:
    def __init__(self) -> None:
        self.tokens = 0.0
        self.stamp = time.monotonic()

    def take(self, want: int, rate: float | None, stop: threading.Event, burst: float = 256.0) -> int:
        """Block until up to `want` bytes may pass at `rate`; returns how many."""
        if not rate:
            return want
        while not stop.is_set():
            now = time.monotonic()
            self.tokens = min(max(burst, rate * 0.05), self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            if self.tokens >= 1:
                grant = int(min(want, self.tokens))
                self.tokens -= grant
                return grant
            stop.wait(min(0.05, (1 - self.tokens) / rate))
        return 0


class LinkProxy:
    """Listens on `listen`, forwards each connection to `upstream`, applying the current LinkState."""

    def __init__(self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.upstream = upstream
        self._listen_addr = listen
        self._state = LinkState()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.bytes_up = 0
        self.bytes_down = 0
        self.bytes_blackholed = 0  # sent towards the broker while the link was a black hole (held)
        self.bytes_blackholed_down = 0  # answers from the broker (PUBACKs) that vanished the same way
        self.connections = 0
        self._traffic = threading.Condition()  # notified as bytes move, for wait_for()

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.getsockname()[:2]
        return host, port

    @property
    def state(self) -> LinkState:
        return self._state

    def start(self) -> LinkProxy:
        server = socket.create_server(self._listen_addr, reuse_port=False)
        server.settimeout(0.2)
        self._server = server
        self._spawn(self._accept_loop, "link-accept")
        return self

    def stop(self, deadline: float | None = None) -> None:
        deadline = resolve_deadline(deadline)
        self._stop.set()
        self.reset_connections()
        if self._server is not None:
            self._server.close()
        for thread in self._threads:
            thread.join(remaining(deadline))

    def wait_for(self, predicate: Callable[[LinkProxy], bool], timeout: float) -> bool:
        """Wait until `predicate(self)` holds, re-checked as bytes move (tests and the fault harness)."""
        with self._traffic:
            return self._traffic.wait_for(lambda: predicate(self), timeout)

    def _moved(self) -> None:
        with self._traffic:
            self._traffic.notify_all()

    def set_state(self, state: LinkState) -> None:
        with self._lock:
            previous, self._state = self._state, state
        if state.mode == "down" and previous.mode != "down":
            self.reset_connections()
        log.info("link: %s", state.describe())

    def reset_connections(self) -> None:
        """Cut every open connection (RST), like a modem dropping its PDP context."""
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()

    def _spawn(self, target: Callable[..., object], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._state.mode == "down":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self.connections += 1
            with self._lock:
                self._conns.update((client, upstream))
            self._spawn(self._pump, "link-up", client, upstream, True)
            self._spawn(self._pump, "link-down", upstream, client, False)

    def _link_up(self) -> bool:
        return self._state.mode == "up"  # read afresh: another thread changes it

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        bucket = _TokenBucket()
        pending: list[tuple[float, bytes]] = []  # (release time, data) for latency
        try:
            while not self._stop.is_set():
                state = self._state
                wait = 0.2 if not pending else max(0.001, min(0.2, pending[0][0] - time.monotonic()))
                src.settimeout(wait)
                try:
                    data = src.recv(4096)
                    if not data:
                        break
                except TimeoutError:
                    data = b""
                if data:
                    if state.mode == "blackhole":  # held, not lost: see LinkState
                        if upward:
                            self.bytes_blackholed += len(data)
                        else:
                            self.bytes_blackholed_down += len(data)
                        self._moved()
                    pending.append((time.monotonic() + state.latency_s, data))
                while pending and pending[0][0] <= time.monotonic() and self._link_up():
                    _, chunk = pending.pop(0)
                    while chunk and not self._stop.is_set():
                        if not self._link_up():  # the link died mid-chunk: the rest waits with it
                            pending.insert(0, (0.0, chunk))
                            break
                        n = bucket.take(len(chunk), self._state.rate_bps, self._stop)
                        dst.sendall(chunk[:n])
                        if upward:
                            self.bytes_up += n
                        else:
                            self.bytes_down += n
                        chunk = chunk[n:]
                        self._moved()
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


@dataclass
class ProfileStep:
    duration_s: float
    state: LinkState


@dataclass
class LinkProfile:
    name: str
    steps: list[ProfileStep] = field(default_factory=list)
    repeat: bool = False


BUILTIN_PROFILES: dict[str, LinkProfile] = {
    "good": LinkProfile("good", [ProfileStep(3600, LinkState())]),
    "flaky": LinkProfile(
        "flaky",
        [
            ProfileStep(30, LinkState()),
            ProfileStep(30, LinkState("down")),
            ProfileStep(60, LinkState("up", rate_bps=2000, latency_s=0.3)),
            ProfileStep(60, LinkState()),
        ],
        repeat=True,
    ),
    "brownout": LinkProfile("brownout", [ProfileStep(3600, LinkState("up", rate_bps=2000, latency_s=0.3))]),
    "lte-cell-edge": LinkProfile(
        "lte-cell-edge",
        [
            ProfileStep(20, LinkState("up", rate_bps=8000, latency_s=0.15)),
            ProfileStep(15, LinkState("blackhole")),
            ProfileStep(20, LinkState("up", rate_bps=3000, latency_s=0.4)),
            ProfileStep(10, LinkState("down")),
        ],
        repeat=True,
    ),
}


class ProfileError(ValueError):
    pass


def load_profile(spec: str) -> LinkProfile:
    """A built-in profile name or a TOML file:

    repeat = true
    [[step]]
    seconds = 30
    mode = "up"          # up | blackhole | down
    rate_bps = 2000      # optional
    latency_ms = 300     # optional
    """
    if spec in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ProfileError(
            f"unknown link profile {spec!r}: use one of {', '.join(BUILTIN_PROFILES)} or a TOML file"
        )
    try:
        data = tomllib.loads(path.read_text())
        steps = []
        for i, raw in enumerate(data.get("step", []), start=1):
            mode = raw.get("mode", "up")
            if mode not in ("up", "blackhole", "down"):
                raise ProfileError(f"{path}: step {i}: mode must be up, blackhole or down, not {mode!r}")
            seconds = float(raw["seconds"])
            if seconds <= 0:
                raise ProfileError(f"{path}: step {i}: seconds must be > 0")
            rate = raw.get("rate_bps")
            steps.append(
                ProfileStep(
                    seconds,
                    LinkState(mode, float(rate) if rate else None, float(raw.get("latency_ms", 0)) / 1000),
                )
            )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"{path}: invalid link profile: {exc}") from None
    if not steps:
        raise ProfileError(f"{path}: a link profile needs at least one [[step]]")
    return LinkProfile(path.stem, steps, bool(data.get("repeat", False)))


class ProfileRunner:
    """Plays a LinkProfile on a LinkProxy in the `link-profile` thread."""

    def __init__(self, proxy: LinkProxy, profile: LinkProfile) -> None:
        self.proxy = proxy
        self.profile = profile
        self._loop = BackgroundLoop("link-profile", self._run)
        self._stop = self._loop.stopping
        self.current: LinkState = LinkState()

    def start(self) -> ProfileRunner:
        self._loop.start()
        return self

    def stop(self, deadline: float | None = None) -> None:
        self._loop.stop(resolve_deadline(deadline))

    def _run(self, _loop: BackgroundLoop) -> None:
        while not self._stop.is_set():
            for step in self.profile.steps:
                self.current = step.state
                self.proxy.set_state(step.state)
                if self._stop.wait(step.duration_s):
                    return
            if not self.profile.repeat:
                return
