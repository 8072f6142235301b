"""The MQTT publisher: one loop that drains the spool to the broker, QoS 1, and deletes a record only
when the broker's PUBACK for that very record arrives.

Each connection gets a fresh paho client, so nothing stays queued in paho's memory across a
reconnect: whatever was in flight when a connection died is still in the spool and is sent again
on the next one (at-least-once; duplicates are bounded by the in-flight window and carry the same
`id`). One thread (`uplink`) owns the client: it connects with jittered, capped backoff, keeps up
to `inflight` records (and a byte allowance sized to the measured link) in flight, highest
priority first, and measures what the link achieves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import agent
from agent.clock import boot_id
from agent.config.schema import UplinkConfig
from agent.uplink.meter import ByteBudget, LinkMeter, degrade_jpeg
from agent.uplink.spool import Priority, Record, Spool
from agent.urls import hide_userinfo

log = logging.getLogger(__name__)

UNCLAIMED_KEPT = 64  # messages held for a handler that has not subscribed yet

# PUBACK reason codes (MQTT 5) that will never succeed on retry: count the record as refused.
PERMANENT_REFUSALS = {0x87, 0x90, 0x99}  # not authorized, topic name invalid, payload format invalid
HISTORICAL_AFTER_S = 10.0
STALL_S = 30.0


class UplinkError(Exception):
    """The broker settings cannot work (bad URL, unreadable certificate); a user-facing message."""


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise UplinkError(
                f"broker URL {hide_userinfo(url)!r} must look like mqtt://host:port or mqtts://host:port"
            )
        if parts.username or parts.password:
            raise UplinkError(
                "put MQTT credentials in uplink.username / uplink.password_file, not in the broker URL"
            )
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise UplinkError(f"broker URL {hide_userinfo(url)!r} has an invalid port") from None
        return cls(parts.hostname, port, tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass
class InFlight:
    record: Record
    sent_mono: float
    size: int


MessageHandler = Callable[[str, bytes], None]


class MqttPublisher:
    """Drains a Spool to an MQTT broker; a stage with start()/stop() and status()."""

    name = "uplink"

    def __init__(
        self,
        spool: Spool,
        cfg: UplinkConfig,
        node_id: str,
        *,
        broker: BrokerUrl | None = None,
        historical_after_s: float = HISTORICAL_AFTER_S,
        check_hostname: bool = True,
    ) -> None:
        self.spool = spool
        self.cfg = cfg
        self.node_id = node_id
        self.broker = broker or BrokerUrl.parse(cfg.broker)
        self.base = f"{cfg.topic_prefix}/{node_id}"
        self.historical_after_s = historical_after_s
        self.check_hostname = (
            check_hostname  # off only behind the local link-profile proxy (chain still verified)
        )
        self.meter = LinkMeter()
        self.budget = ByteBudget(cfg.max_bytes_per_s, cfg.max_bytes_per_day, spool.uptime, store=spool)
        self._password = self._read_password()
        self._check_tls_files()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._handlers: list[tuple[str, MessageHandler]] = []
        # Messages that arrived before a handler for them subscribed: a persistent session delivers what
        # was queued for the node right after CONNACK, possibly before the control stage is up.
        self._unclaimed: deque[tuple[str, bytes]] = deque(maxlen=UNCLAIMED_KEPT)
        self._handlers_lock = threading.Lock()
        self._listening: list[str] = []  # subscribed on this connection; in the `online` status
        self._refused: set[str] = set()  # subscriptions the broker refused on this connection
        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._inflight: dict[int, InFlight] = {}
        self._session_failed: str | None = None
        self.connects = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.published = 0
        self.duplicates_possible = 0  # records re-sent after a connection died with them in flight
        self.degraded = 0
        self._smaller: dict[int, bytes] = {}  # degraded thumbnails by rowid: shrink each once, not per retry
        self._sub_mids: dict[int, str] = {}  # SUBSCRIBE message id -> topic suffix, until its SUBACK
        # 0 when nothing will take commands (control off): a kept session would still receive them
        self.session_expiry_s = cfg.session_expiry_s
        self.refused = 0
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self._boot_id = boot_id()
        # Fields added to the retained `online` status (agent.health: camera state, model); re-sent
        # on `refresh_status()`, from the uplink thread, so it is never older than what it replaces.
        self.status_extra: Callable[[], dict[str, Any]] | None = None
        self._status_dirty = threading.Event()
        self._subs_dirty = threading.Event()  # handlers added after the session subscribed
        spool.add_listener(lambda _records: self._wake.set())

    # -- configuration checks (fail at start, with a clear message) -----------------------------
    def _read_password(self) -> str | None:
        if self.cfg.password_file is not None:
            try:
                return self.cfg.password_file.read_text().strip()
            except OSError as exc:
                raise UplinkError(
                    f"cannot read uplink.password_file {self.cfg.password_file}: {exc}"
                ) from None
        return self.cfg.password

    def _check_tls_files(self) -> None:
        tls = self.cfg.tls
        for label, path in (
            ("ca_file", tls.ca_file),
            ("cert_file", tls.cert_file),
            ("key_file", tls.key_file),
        ):
            if path is not None and not Path(path).is_file():
                raise UplinkError(f"uplink.tls.{label} {path} does not exist")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise UplinkError("uplink.tls.cert_file and uplink.tls.key_file go together")
        if not self.broker.tls and (tls.cert_file or tls.ca_file):
            log.warning("TLS files are configured but the broker URL is mqtt:// (plain TCP); use mqtts://")

    # -- public surface -----------------------------------------------------------------------------
    def subscribe(self, suffix: str, handler: MessageHandler) -> None:
        """Receive messages on `{prefix}/{node}/{suffix}` (e.g. "cmd/#"); handlers run on the uplink thread
        and must be quick (hand work to a queue). May be called while connected (subscribes at once)."""
        with self._handlers_lock:
            self._handlers.append((suffix, handler))
        self._subs_dirty.set()  # the uplink thread subscribes and hands over anything held for it
        self._wake.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> MqttPublisher:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Say goodbye (retained offline status) if connected, then stop within `timeout`."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.cfg.max_bytes_per_day:
            self.budget.save()

    def status(self) -> dict[str, Any]:
        return {
            "broker": str(self.broker),
            "connected": self.connected,
            "connects": self.connects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "published": self.published,
            "inflight": len(self._inflight),
            "degraded_thumbnails": self.degraded,
            "refused": self.refused,
            "last_error": self.last_error,
            "link": self.meter.snapshot(),
            "budget": {
                "per_second": self.cfg.max_bytes_per_s,
                "per_day": self.cfg.max_bytes_per_day,
                "spent_today": self.budget.spent_today,
            },
        }

    # -- the loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = self.cfg.reconnect_min_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._session()
            except Exception as exc:  # a broker or TLS failure must never kill the uplink thread
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("uplink to %s: %s", self.broker, self.last_error)
            if self._stop.is_set():
                break
            if time.monotonic() - started > 60:
                backoff = self.cfg.reconnect_min_s  # the connection had been healthy: start over
            delay = (
                random.uniform(0.5, 1.0) * backoff
            )  # full jitter halves thundering herds after a broker restart
            log.info("uplink: reconnecting in %.1fs", delay)
            self._stop.wait(delay)
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    def _new_client(self) -> paho.Client:
        v5 = self.cfg.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.node_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            # a persistent session keeps the cmd/# subscription (and commands sent meanwhile) while away
            clean_session=None if v5 else self.session_expiry_s == 0,
        )
        client.max_inflight_messages_set(max(self.cfg.inflight, 1))
        client.max_queued_messages_set(0)
        client.connect_timeout = 10.0
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self._password)
        if self.broker.tls:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.cfg.tls.ca_file) if self.cfg.tls.ca_file else None
            )
            context.check_hostname = self.check_hostname
            if self.cfg.tls.cert_file and self.cfg.tls.key_file:
                context.load_cert_chain(str(self.cfg.tls.cert_file), str(self.cfg.tls.key_file))
            client.tls_set_context(context)
        client.will_set(f"{self.base}/status", self._status_payload("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _status_payload(self, state: str) -> bytes:
        body: dict[str, Any] = {
            "state": state,
            "node": self.node_id,
            "agent": agent.__version__,
            "boot": self._boot_id,
        }
        if state == "online":
            # what it takes messages on: once an operator sees cmd/# here, commands are received
            body["listening"] = self._listening
        if state == "online" and self.status_extra is not None:
            try:
                body = {**self.status_extra(), **body}
            except Exception:
                log.exception("status_extra failed; publishing the plain status")
        return json.dumps(body, separators=(",", ":")).encode()

    def refresh_status(self) -> None:
        """Publish the retained `online` status again (its extra fields changed)."""
        self._status_dirty.set()
        self._wake.set()

    def _session(self) -> None:
        client = self._new_client()
        self._client = client
        self._inflight = {}
        self._sub_mids, self._refused = {}, set()
        self._session_failed = None
        try:
            if self.cfg.protocol == "5":
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self.session_expiry_s
                client.connect(
                    self.broker.host,
                    self.broker.port,
                    keepalive=self.cfg.keepalive_s,
                    clean_start=self.session_expiry_s == 0,
                    properties=properties,
                )
            else:
                client.connect(self.broker.host, self.broker.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            self.connect_failures += 1
            raise ConnectionError(f"cannot connect: {exc}") from None
        sock = client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):
            # small QoS 1 publishes must not wait for Nagle's algorithm (40 ms stalls per round trip)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.monotonic() + 15
        while not self._connected.is_set() and self._session_failed is None:
            if self._stop.is_set() or time.monotonic() > deadline:
                client.disconnect()
                self.connect_failures += 1
                raise ConnectionError("no CONNACK from the broker")
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS and not self._connected.is_set():
                break
        if not self._connected.is_set():
            self.connect_failures += 1
            raise ConnectionError(self._session_failed or "connection closed before CONNACK")
        try:
            self._serve(client)
        finally:
            self._connected.clear()
            self._listening = []
            self.connected_since = None
            if self._inflight:
                self.duplicates_possible += len(self._inflight)
            self._inflight = {}
            self.meter.busy(0)
            self._client = None

    def _serve(self, client: paho.Client) -> None:
        # subscribe first: the broker handles one connection's packets in order, so whoever sees this
        # `online` can send commands (cmd/#) and they will be received
        self._subs_dirty.clear()
        subscribed = set()
        for suffix, _ in list(self._handlers):
            self._subscribe(client, suffix)
            subscribed.add(suffix)
        self._listening = sorted(subscribed - self._refused)
        client.publish(f"{self.base}/status", self._status_payload("online"), qos=1, retain=True)
        while self._connected.is_set():
            if self._subs_dirty.is_set():
                self._subs_dirty.clear()
                for suffix, _ in list(self._handlers):
                    if suffix not in subscribed:
                        self._subscribe(client, suffix)
                        subscribed.add(suffix)
                        self._listening = sorted(subscribed - self._refused)
                        self._status_dirty.set()  # say `online` again, now that it is listening
                self._hand_over_held()
            if self._stop.is_set():
                info = client.publish(
                    f"{self.base}/status", self._status_payload("offline"), qos=1, retain=True
                )
                deadline = time.monotonic() + 1.0
                while not info.is_published() and time.monotonic() < deadline and self._connected.is_set():
                    client.loop(timeout=0.05)
                client.disconnect()
                client.loop(timeout=0.1)
                return
            if self._status_dirty.is_set():
                self._status_dirty.clear()
                client.publish(f"{self.base}/status", self._status_payload("online"), qos=1, retain=True)
            self._wake.clear()  # before reading the spool: a commit from now on wakes the wait below
            self._fill(client)
            self._check_stall(client)
            # With publishes in flight, wait on the socket for their PUBACKs; otherwise only poll it
            # and wait on the spool's commit signal instead, so a new record is sent at once rather
            # than after the socket wait (that cost up to 50 ms per event: bench/latency.py).
            rc = client.loop(timeout=0.05 if self._inflight else 0.0)
            if rc != paho.MQTT_ERR_SUCCESS:
                self.last_error = f"network loop: {paho.error_string(rc)}"
                return
            if not self._inflight:
                self._wake.wait(0.05)

    def _subscribe(self, client: paho.Client, suffix: str) -> None:
        _, mid = client.subscribe(f"{self.base}/{suffix}", qos=1)
        if mid is not None:
            self._sub_mids[mid] = suffix

    def _on_subscribe(self, client, userdata, mid, reason_code_list, properties) -> None:
        suffix = self._sub_mids.pop(mid, None)
        if suffix is None or not any(rc.is_failure for rc in reason_code_list):
            return
        log.warning(
            "uplink: the broker refused the subscription to %s/%s (%s): nothing sent there will arrive; "
            "check the broker's ACL",
            self.base,
            suffix,
            ", ".join(str(rc) for rc in reason_code_list),
        )
        self._refused.add(suffix)
        self._listening = [s for s in self._listening if s != suffix]
        self._status_dirty.set()  # `online` again, without the refused topic

    def _allowance_bytes(self, rate: float | None) -> int:
        """Bytes we let sit in flight: about two seconds of the measured link, so a live event never
        queues long behind a backlog already handed to the socket."""
        if rate is None:
            return 256 * 1024
        return int(min(1 << 20, max(2048, rate * 2.0)))

    def _fill(self, client: paho.Client) -> None:
        room = self.cfg.inflight - len(self._inflight)
        if room <= 0:
            return
        inflight_bytes = sum(f.size for f in self._inflight.values())
        rate = self.meter.rate_bps()
        allowance = self._allowance_bytes(rate)
        if inflight_bytes >= allowance:
            return
        live_since = self.spool.uptime() - self.historical_after_s
        records = self.spool.next_records(
            room,
            exclude={f.record.rowid for f in self._inflight.values()},
            live_since=live_since,
            backlog_share=self.cfg.backlog_share,
        )
        now_uptime = self.spool.uptime()
        for record in records:
            payload, props = self._payload_for(record, now_uptime, rate)
            critical = record.priority == Priority.CRITICAL
            if not self.budget.allows(len(payload), critical, record.priority <= Priority.EVENT):
                break  # highest priority first: if this one must wait, so must everything after it
            if self._inflight and inflight_bytes + len(payload) > allowance:
                break
            info = client.publish(
                f"{self.base}/{record.topic}", payload, qos=1, retain=record.retain, properties=props
            )
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self.last_error = f"publish: {paho.error_string(info.rc)}"
                return
            self._inflight[info.mid] = InFlight(record, time.monotonic(), len(payload))
            inflight_bytes += len(payload)
            self.budget.spend(len(payload))
            self.meter.busy(len(self._inflight))

    def _payload_for(
        self, record: Record, now_uptime: float, rate: float | None
    ) -> tuple[bytes, Properties | None]:
        payload = record.payload
        props = None
        historical = now_uptime - record.accepted_uptime > self.historical_after_s
        if record.is_json:
            if historical and payload.endswith(b"}"):
                payload = payload[:-1] + b',"historical":true}'
            return payload, props
        if record.stream == "thumbs" and self._link_too_slow_for(len(payload), rate):
            smaller = self._smaller.get(record.rowid)
            if smaller is None:
                smaller = degrade_jpeg(payload) or payload
                self.degraded += smaller is not payload
                self._smaller[record.rowid] = smaller
                if len(self._smaller) > 16:
                    del self._smaller[next(iter(self._smaller))]
            if smaller is not payload:
                payload = smaller
                if self.cfg.protocol == "5":
                    props = Properties(PacketTypes.PUBLISH)
                    props.UserProperty = [("vigil-degraded", "1")]
        return payload, props

    def _link_too_slow_for(self, size: int, rate: float | None) -> bool:
        """A thumbnail that would occupy the link for more than five seconds is sent smaller."""
        if self.cfg.max_bytes_per_s:
            rate = min(rate or self.cfg.max_bytes_per_s, self.cfg.max_bytes_per_s)
        if self.cfg.max_bytes_per_day and self.budget.day_fraction() > 0.5:
            return True
        return rate is not None and size / rate > 5.0

    def _check_stall(self, client: paho.Client) -> None:
        if not self._inflight:
            return
        oldest = min(f.sent_mono for f in self._inflight.values())
        if time.monotonic() - oldest > max(STALL_S, 2.0 * self.cfg.keepalive_s):
            self.last_error = "no PUBACK for too long; reconnecting"
            log.warning("uplink: %s", self.last_error)
            client.disconnect()
            self._connected.clear()

    # -- paho callbacks (run on the uplink thread, inside client.loop) -------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._session_failed = f"broker refused the connection: {reason_code}"
            self.last_error = self._session_failed
            log.error("uplink: %s", self._session_failed)
            return
        self.connects += 1
        self.connected_since = time.monotonic()
        self.last_error = None
        self._connected.set()
        log.info("uplink: connected to %s", self.broker)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            self.disconnects += 1
            log.warning("uplink: disconnected from %s (%s)", self.broker, reason_code)
        self._connected.clear()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        flight = self._inflight.pop(mid, None)
        if flight is None:
            return  # the birth/offline status, or a record from a connection we already abandoned
        failed = getattr(reason_code, "is_failure", False)
        if failed and getattr(reason_code, "value", 0) not in PERMANENT_REFUSALS:
            log.warning("uplink: broker did not take %s (%s); will retry", flight.record.topic, reason_code)
            return
        if failed:
            self.refused += 1
            self.spool.drop(flight.record.rowid, "refused_by_broker")
            log.error("uplink: broker refused %s (%s); record dropped", flight.record.topic, reason_code)
        else:
            self.spool.ack([flight.record.rowid])
            self.published += 1
            self.meter.acked(flight.size, time.monotonic() - flight.sent_mono)
        self.meter.busy(len(self._inflight))

    def _handlers_for(self, topic: str) -> list[MessageHandler]:
        with self._handlers_lock:
            return [h for suffix, h in self._handlers if paho.topic_matches_sub(f"{self.base}/{suffix}", topic)]

    def _on_message(self, client, userdata, message) -> None:
        self._hand_over_held()  # older messages first
        handlers = self._handlers_for(message.topic)
        if not handlers:
            if len(self._unclaimed) == self._unclaimed.maxlen:
                log.warning("uplink: %d messages wait for a handler; dropping the oldest", len(self._unclaimed))
            self._unclaimed.append((message.topic, message.payload))
        for handler in handlers:
            self._deliver(handler, message.topic, message.payload)

    def _hand_over_held(self) -> None:
        """Deliver, in arrival order, held messages that now have a handler. Only the uplink thread
        delivers, so replayed and live messages reach a handler in the order the broker sent them."""
        if not self._unclaimed:
            return
        still_held: deque[tuple[str, bytes]] = deque(maxlen=UNCLAIMED_KEPT)
        while self._unclaimed:
            topic, payload = self._unclaimed.popleft()
            handlers = self._handlers_for(topic)
            if not handlers:
                still_held.append((topic, payload))
            for handler in handlers:
                self._deliver(handler, topic, payload)
        self._unclaimed = still_held

    def _deliver(self, handler: MessageHandler, topic: str, payload: bytes) -> None:
        try:
            handler(topic[len(self.base) + 1 :], payload)
        except Exception:
            log.exception("handler for %s failed", topic)
