"""The MQTT publisher: one loop that drains the spool to the broker, QoS 1, and deletes a record only
when the broker's PUBACK for that very record arrives on the connection that carried it.

One thread (`uplink`) owns everything: it opens a Session per connection (jittered, capped backoff
between them), keeps up to `inflight` records in a PublishWindow (and a byte allowance sized to the
measured link), highest priority first, hands received commands to the InboundRouter, and measures
what the link achieves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import agent
from agent.clock import boot_id
from agent.config.schema import UplinkConfig
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.uplink.meter import ByteBudget, LinkMeter, ThumbnailShrinker
from agent.uplink.mqtt.router import InboundRouter, MessageHandler
from agent.uplink.mqtt.session import Ack, Session
from agent.uplink.mqtt.settings import BrokerUrl, PublisherSettings
from agent.uplink.mqtt.window import PublishWindow
from agent.uplink.spool import Priority, Record, Spool

log = logging.getLogger(__name__)

# PUBACK reason codes (MQTT 5) that will never succeed on retry: count the record as refused.
PERMANENT_REFUSALS = {0x87, 0x90, 0x99}  # not authorized, topic name invalid, payload format invalid
# A connection the broker ends with one of these right after a publish (Mosquitto answers a publish
# over its message_size_limit with reason 0x95, which a PUBACK may not carry: paho calls it a protocol
# error) refused that publish; twice in a row for the same record, and the record is dropped as refused
# rather than sent on every reconnect forever. Link drops end connections without such a code.
PROTOCOL_REFUSALS = {0x81, 0x82, 0x95}  # malformed packet, protocol error, packet too large
REFUSED_AFTER = 2
HEALTHY_S = 60.0  # a connection that lasted this long resets the reconnect backoff
READ_AHEAD = 64  # records read from the spool at once
# Records handed to paho per connection, as a multiple of `uplink.inflight` (what paho lets onto the
# wire unacknowledged): the next one goes out from paho's own thread the moment a PUBACK frees a slot,
# instead of waiting for this thread to wake up. The byte allowance (two seconds of the measured link)
# still bounds it, so a live event never queues long behind them.
HANDED_OVER = 8


class MqttPublisher:
    """Drains a Spool to an MQTT broker; a stage with start()/stop() and status()."""

    name = "uplink"

    def __init__(self, spool: Spool, settings: PublisherSettings) -> None:
        self.spool = spool
        self.settings = settings
        self.broker = settings.broker
        self.base = settings.base
        self.meter = LinkMeter()
        self.budget = ByteBudget(
            settings.max_bytes_per_s, settings.max_bytes_per_day, spool.uptime, store=spool
        )
        self.shrinker = ThumbnailShrinker(self.budget, settings.max_bytes_per_s)
        self.router = InboundRouter(settings.base)
        self._status_extra: Callable[[], dict[str, Any]] | None = None
        self._loop = BackgroundLoop("uplink", self._run)
        self._stop = self._loop.stopping
        self._wake = threading.Event()
        self._status_dirty = threading.Event()
        self._subs_dirty = threading.Event()  # handlers added after the session subscribed
        self._session: Session | None = None
        self._window: PublishWindow | None = None
        self._listening: list[str] = []  # subscribed and granted on this connection; in `online`
        self._boot_id = boot_id()
        self.connects = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.published = 0
        self.duplicates_possible = 0  # records sent again after a connection ended with them in flight
        self.refused = 0
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self._suspect: tuple[int, int] | None = None  # (rowid, connections it ended) — see PROTOCOL_REFUSALS
        # records read ahead from the spool, in the order they go; any commit (new records, maybe of a
        # higher priority; evictions) or a new connection makes it stale
        self._ahead: deque[Record] = deque()
        self._ahead_generation = -1
        spool.add_listener(lambda _records: self._wake.set())

    @classmethod
    def from_config(
        cls,
        spool: Spool,
        cfg: UplinkConfig,
        node_id: str,
        *,
        broker: BrokerUrl | None = None,
        check_hostname: bool = True,
        takes_commands: bool = True,
    ) -> MqttPublisher:
        settings = PublisherSettings.from_config(
            cfg, node_id, broker=broker, check_hostname=check_hostname, takes_commands=takes_commands
        )
        return cls(spool, settings)

    # -- public surface -----------------------------------------------------------------------------
    def subscribe(self, suffix: str, handler: MessageHandler) -> None:
        """Receive messages on `{prefix}/{node}/{suffix}` (e.g. "cmd/#"); handlers run on the uplink thread
        and must be quick (hand work to a queue). May be called while connected (subscribes at once)."""
        self.router.add(suffix, handler)
        self._subs_dirty.set()
        self._wake.set()

    def reconfigure(self, cfg: UplinkConfig) -> None:
        """Take the live-tunable uplink settings (byte budgets, backlog share) from a new config;
        connection settings take effect at the next start."""
        self.settings = dataclasses.replace(
            self.settings,
            max_bytes_per_s=cfg.max_bytes_per_s,
            max_bytes_per_day=cfg.max_bytes_per_day,
            backlog_share=cfg.backlog_share,
        )
        self.budget.per_second = cfg.max_bytes_per_s
        self.budget.per_day = cfg.max_bytes_per_day
        self.shrinker.per_second = cfg.max_bytes_per_s

    def set_status_extra(self, provider: Callable[[], dict[str, Any]]) -> None:
        """Fields added to the retained `online` status (camera state, model), re-read on refresh_status()."""
        self._status_extra = provider

    def refresh_status(self) -> None:
        """Publish the retained `online` status again (its extra fields changed)."""
        self._status_dirty.set()
        self._wake.set()

    @property
    def connected(self) -> bool:
        session = self._session
        return session is not None and session.connected

    @property
    def degraded(self) -> int:
        return self.shrinker.degraded

    def start(self) -> MqttPublisher:
        self._loop.start()
        return self

    def request_stop(self) -> None:
        """Tell the thread to say goodbye and stop, without waiting (see stop())."""
        self._loop.request_stop()
        self._wake.set()

    def stop(self, deadline: float | None = None) -> None:
        """Say goodbye (retained offline status) if connected, then stop by `deadline`; a network call
        stuck on a dead broker is left to the daemon thread."""
        self._loop.request_stop()
        self._wake.set()
        self._loop.join(resolve_deadline(deadline))
        if self.settings.max_bytes_per_day:
            self.budget.save()

    def status(self) -> dict[str, Any]:
        window = self._window
        return {
            "broker": str(self.broker),
            "connected": self.connected,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "published": self.published,
            "inflight": len(window) if window is not None else 0,
            "degraded_thumbnails": self.degraded,
            "refused": self.refused,
            "duplicates_possible": self.duplicates_possible,
            "last_error": self.last_error,
            "link": self.meter.snapshot(),
            "budget": {
                "per_second": self.settings.max_bytes_per_s,
                "per_day": self.settings.max_bytes_per_day,
                "spent_today": self.budget.spent_today,
            },
        }

    def status_payload(self, state: str) -> bytes:
        """The retained status: `online` says what the node listens on; the last will says `offline`."""
        body: dict[str, Any] = {
            "state": state,
            "node": self.settings.node_id,
            "agent": agent.__version__,
            "boot": self._boot_id,
        }
        if state == "online":
            body["listening"] = list(self._listening)  # once an operator sees cmd/# here, commands arrive
            if self._status_extra is not None:
                try:
                    body = {**self._status_extra(), **body}
                except Exception:
                    log.exception("status extra fields failed; publishing the plain status")
        return json.dumps(body, separators=(",", ":")).encode()

    # -- connections ---------------------------------------------------------------------------------
    def _run(self, _loop: BackgroundLoop) -> None:
        s = self.settings
        backoff = s.reconnect_min_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._connection()
            except Exception as exc:  # a broker or TLS failure must never kill the uplink thread
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("uplink to %s: %s", self.broker, self.last_error)
            if self._stop.is_set():
                break
            if time.monotonic() - started > HEALTHY_S:
                backoff = s.reconnect_min_s  # the connection had been healthy: start over
            delay = random.uniform(0.5, 1.0) * backoff  # full jitter halves thundering herds after a restart
            log.info("uplink: reconnecting in %.1fs", delay)
            self._stop.wait(delay)
            backoff = min(backoff * 2, s.reconnect_max_s)

    def _connection(self) -> None:
        handed_over = self.settings.inflight * HANDED_OVER
        session = Session(  # woken when half of what it holds is acknowledged (see Session)
            self.settings, will=self.status_payload("offline"), notify=self._wake.set, ack_batch=handed_over // 2
        )
        try:
            session.open(self._stop)
        except ConnectionError:
            self.connect_failures += 1
            raise
        self.connects += 1
        self.connected_since = time.monotonic()
        self.last_error = None
        log.info("uplink: connected to %s", self.broker)
        window = PublishWindow(handed_over, self.meter)
        self._session, self._window = session, window
        self._ahead.clear()
        try:
            self._serve(session, window)
        finally:
            self._judge_ending(session, window)
            self.duplicates_possible += window.abandon(time.monotonic())
            if session.ended and not self._stop.is_set():
                self.disconnects += 1
                self.last_error = session.ended
                log.warning("uplink: connection to %s ended: %s", self.broker, session.ended)
            self._session = self._window = None
            self._listening = []
            self.connected_since = None

    def _serve(self, session: Session, window: PublishWindow) -> None:
        # subscribe first: the broker handles one connection's packets in order, so whoever sees this
        # `online` can send commands (cmd/#) and they will be received
        self._subs_dirty.clear()
        pending_subs: dict[int, str] = {}
        subscribed = self._subscribe_new(session, set(), pending_subs)
        session.publish(f"{self.base}/status", self.status_payload("online"), retain=True)
        while True:
            self._wake.clear()  # before looking: whatever arrives from now on wakes the wait below
            self._handle(session, window, pending_subs)
            if not session.connected:
                session.close()
                return
            if self._subs_dirty.is_set():
                self._subs_dirty.clear()
                if self._subscribe_new(session, subscribed, pending_subs):
                    self._status_dirty.set()  # say `online` again, now that it listens on more
                self.router.hand_over_held()
            if self._stop.is_set():
                session.close(goodbye=(f"{self.base}/status", self.status_payload("offline")))
                return
            if self._status_dirty.is_set():
                self._status_dirty.clear()
                session.publish(f"{self.base}/status", self.status_payload("online"), retain=True)
            self._fill(session, window)
            session.coalesce(len(window) > self.settings.inflight)  # a backlog: more than the wire takes
            if window.stalled(time.monotonic(), self.settings.keepalive_s):
                log.warning("uplink: no PUBACK for too long; reconnecting")
                session.abort("no PUBACK for too long")
                return
            # wait for a PUBACK, a command, a commit of new records or a stop, whichever comes first
            self._wake.wait(0.5)

    def _judge_ending(self, session: Session, window: PublishWindow) -> None:
        """A connection the broker ended over a publish: after REFUSED_AFTER times for the same record,
        count it as refused (a record too large for the broker would otherwise be sent forever)."""
        culprit = window.oldest()
        if session.end_code not in PROTOCOL_REFUSALS or culprit is None:
            self._suspect = None
            return
        rowid = culprit.record.rowid
        times = self._suspect[1] + 1 if self._suspect is not None and self._suspect[0] == rowid else 1
        self._suspect = (rowid, times)
        if times >= REFUSED_AFTER:
            self._suspect = None
            self.refused += 1
            self.spool.drop(rowid, "refused_by_broker")
            log.error(
                "uplink: the broker closed the connection over %s (%d bytes) %d times (%s); record dropped "
                "as refused (too large for the broker?)", culprit.record.topic, culprit.size, times, session.ended,
            )  # fmt: skip

    def _subscribe_new(self, session: Session, subscribed: set[str], pending: dict[int, str]) -> set[str]:
        """Subscribe to handlers' topics not yet subscribed on this session; returns the new ones."""
        new = {suffix for suffix in self.router.suffixes() if suffix not in subscribed}
        for suffix in sorted(new):
            mid = session.subscribe(f"{self.base}/{suffix}")
            if mid is not None:
                pending[mid] = suffix
        subscribed |= new
        self._listening = sorted(set(self._listening) | new)
        return new

    def _handle(self, session: Session, window: PublishWindow, pending_subs: dict[int, str]) -> None:
        events = session.take_events()
        now = time.monotonic()
        if events.acked:
            delivered = self._settle(window, events.acked, now)
            if delivered:
                self.spool.ack(delivered)  # one call for the lot: the spool deletes them with its next commit
        for ack in events.refused:
            self._refused(window, ack, now)
        if events.acked or events.refused:
            self.meter.busy(len(window), now)
        for mid, refused, reasons in events.subacks:
            suffix = pending_subs.pop(mid, None)
            if suffix is not None and refused:
                log.warning(
                    "uplink: the broker refused the subscription to %s/%s (%s): nothing sent there will "
                    "arrive; check the broker's ACL",
                    self.base,
                    suffix,
                    reasons,
                )
                self._listening = [s for s in self._listening if s != suffix]
                self._status_dirty.set()  # `online` again, without the refused topic
        for topic, payload in events.messages:
            self.router.deliver(topic, payload)

    def _settle(self, window: PublishWindow, mids: list[int], now: float) -> list[int]:
        """Account the PUBACKs that accepted `mids`; returns the rowids of the records they delivered
        (a status message is not a record)."""
        flights = window.settle_all(mids)
        self.published += len(flights)
        self.meter.acked_all([(f.size, now - f.sent) for f in flights], now)
        return [f.record.rowid for f in flights]

    def _refused(self, window: PublishWindow, ack: Ack, now: float) -> None:
        """A PUBACK with a failure reason: retry later, or drop the record when it never can go."""
        flight = window.settle(ack.mid)
        if flight is None:
            return  # a status message
        record = flight.record
        if ack.code not in PERMANENT_REFUSALS:
            log.warning("uplink: broker did not take %s (%s); will retry", record.topic, ack.reason)
            window.cool_down(record.rowid, now)
            return
        self.refused += 1
        self.spool.drop(record.rowid, "refused_by_broker")
        log.error("uplink: broker refused %s (%s); record dropped", record.topic, ack.reason)

    # -- sending -------------------------------------------------------------------------------------
    def _fill(self, session: Session, window: PublishWindow) -> None:
        if window.room <= 0:
            return
        rate = self.meter.rate_bps()
        allowance = window.allowance(rate)
        if window.bytes >= allowance:
            return
        now = time.monotonic()
        uptime = self.spool.uptime()
        while window.room > 0:
            record = self._next(window, now, uptime)
            if record is None:
                break
            payload, props = self._prepare(record, uptime, rate)
            limit = session.max_packet_size
            if limit is not None and len(payload) + len(self.base) + len(record.topic) + 16 > limit:
                self.refused += 1
                self.spool.drop(record.rowid, "refused_by_broker")
                log.error("uplink: %s (%d bytes) exceeds the broker's maximum packet size (%d); record dropped",
                          record.topic, len(payload), limit)  # fmt: skip
                continue
            critical = record.priority == Priority.CRITICAL
            if not self.budget.allows(len(payload), critical, record.priority <= Priority.EVENT) or (
                window.inflight and window.bytes + len(payload) > allowance
            ):
                self._ahead.appendleft(record)  # highest priority first: what follows waits too
                break
            mid = session.publish(
                f"{self.base}/{record.topic}", payload, retain=record.retain, properties=props
            )
            if mid is None:
                self._ahead.clear()
                break
            window.sent(mid, record, len(payload), now)
            self.budget.spend(len(payload))
        self.meter.busy(len(window), now)

    def _next(self, window: PublishWindow, now: float, uptime: float) -> Record | None:
        """The next record to send: read ahead in batches, so a backlog costs one spool read per
        batch rather than per record; re-read after every commit so priorities stay right."""
        if self._ahead_generation != self.spool.generation:
            self._ahead.clear()
            self._ahead_generation = self.spool.generation
        if not self._ahead:
            self._ahead.extend(
                self.spool.next_records(
                    max(window.room, READ_AHEAD),
                    exclude=window.busy_rowids(now),
                    live_since=uptime - self.settings.historical_after_s,
                    backlog_share=self.settings.backlog_share,
                )
            )
        return self._ahead.popleft() if self._ahead else None

    def _prepare(self, record: Record, uptime: float, rate: float | None) -> tuple[bytes, Properties | None]:
        """The bytes that go for a record now: flagged `historical` when it waited, a smaller
        thumbnail when the link cannot carry the original in time."""
        payload = record.payload
        if record.is_json:
            if uptime - record.accepted_uptime > self.settings.historical_after_s and payload.endswith(b"}"):
                payload = payload[:-1] + b',"historical":true}'
            return payload, None
        if record.stream == "thumbs" and self.shrinker.needed(len(payload), rate):
            smaller = self.shrinker.shrink(record.rowid, payload)
            if smaller is not None:
                props = None
                if self.settings.v5:
                    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    props.UserProperty = [("vigil-degraded", "1")]
                return smaller, props
        return payload, None
