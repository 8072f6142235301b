"""The ingest's MQTT session: persistent, QoS 1, and acknowledged by hand only after the database has
committed what a message carried (paho-mqtt's `manual_ack`).

One thread (`ingest-mqtt`) owns the paho client, like the node's uplink owns its own: it connects
(trying each `--broker` in turn), subscribes, hands every message to `deliver` and sends the
acknowledgements the writer queues with `ack()`. Each acknowledgement carries the generation of the
connection its message came on, and is dropped if that connection is gone: a packet id means
nothing on another connection (it may name another message there), and the broker re-sends every
message that was not acknowledged when the session resumes, so the writer stores it again
(idempotently) and acknowledges that copy.

With `share`, the filters become `$share/GROUP/…` so several ingest processes split the stream.
That needs MQTT 5 (the broker says in CONNACK whether it supports shared subscriptions); a broker
that ignores `$share` would silently deliver nothing, so the ingest refuses to start instead.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.uplink.mqtt.settings import BrokerUrl, UplinkError
from fleet.errors import FleetError
from fleet.wire import Incoming

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 15.0
LOOP_S = 0.02  # how long an acknowledgement may wait for the MQTT thread


def broker_url(url: str) -> BrokerUrl:
    """The agent's own broker URL rules, in the words of the back office's options."""
    try:
        return BrokerUrl.parse(url, field="--broker", credentials="identities come from --operator")
    except UplinkError as exc:
        raise FleetError(str(exc)) from None


@dataclass(frozen=True)
class Delivery:
    """A message waiting for its commit: what to acknowledge, on which connection."""

    generation: int
    mid: int
    qos: int
    message: Incoming


@dataclass
class SessionOptions:
    brokers: list[BrokerUrl]
    client_id: str
    filters: list[str]
    protocol: str = "auto"  # "5", "3.1.1" or "auto" (5, falling back to 3.1.1 for brokers without it)
    share: str | None = None
    tls: ssl.SSLContext | None = None
    session_expiry_s: int = 14 * 86400
    receive_maximum: int = 500
    keepalive_s: int = 30
    reconnect_max_s: float = 10.0


class ProtocolRefused(Exception):
    """The broker does not speak MQTT 5 (RabbitMQ before 3.13): use 3.1.1 with it."""


class SessionRefused(Exception):
    """The broker will not give this ingest what it needs (subscription refused, no shared subscriptions)."""


@dataclass
class SessionStats:
    connects: int = 0
    disconnects: int = 0
    received: int = 0
    acked: int = 0
    stale_acks: int = 0  # acknowledgements for a connection that had gone (the message comes again)
    last_error: str | None = None
    broker: str | None = None
    protocol: str | None = None
    fatal: str | None = None
    refused_protocol_5: set[str] = field(default_factory=set)


class MqttSession:
    """Start, stop, `ack()`; messages go to `deliver(delivery) -> bool` (False: not taken, do not ack)."""

    name = "ingest-mqtt"

    def __init__(self, options: SessionOptions, deliver: Callable[[Delivery], bool]) -> None:
        if not options.brokers:
            raise FleetError("give at least one --broker")
        self.options = options
        self.deliver = deliver
        self.stats = SessionStats()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._acks: deque[tuple[int, int, int]] = deque()
        self._generation = 0
        self._client: paho.Client | None = None
        self._connack: ReasonCode | None = None
        self._shared_available = True
        self._pending_subs: dict[int, str] = {}
        self._refused: list[str] = []

    # -- public surface -----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> MqttSession:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def ack(self, deliveries: list[Delivery]) -> None:
        """Acknowledge committed messages (any thread); sent by the MQTT thread within LOOP_S."""
        self._acks.extend((d.generation, d.mid, d.qos) for d in deliveries if d.qos > 0)

    def drain(self) -> None:
        """Take no more messages (they stay with the broker); acknowledgements still go out."""
        self._draining.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._draining.set()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the connection loop ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff, index, switched = 0.5, 0, False
        while not self._stop.is_set() and self.stats.fatal is None:
            broker = self.options.brokers[index % len(self.options.brokers)]
            started = time.monotonic()
            try:
                self._session(broker)
            except ProtocolRefused:
                if not switched:
                    switched = True
                    continue  # the same broker again at once, with MQTT 3.1.1
            except SessionRefused as exc:
                self.stats.fatal = str(exc)
                log.error("ingest: %s", exc)
                return
            except Exception as exc:  # a broker or TLS failure must never end the ingest
                self.stats.last_error = f"{broker}: {type(exc).__name__}: {exc}"
                log.warning("ingest: %s", self.stats.last_error)
            if self._stop.is_set():
                return
            if time.monotonic() - started > 60:
                backoff = 0.5
            index += 1  # the next broker of a cluster, if there is one
            switched = False
            self._stop.wait(random.uniform(0.5, 1.0) * backoff)
            backoff = min(backoff * 2, self.options.reconnect_max_s)

    @property
    def _may_fall_back(self) -> bool:
        return self.options.protocol == "auto" and not self.options.share  # shared subscriptions need 5

    def _protocol_for(self, broker: BrokerUrl) -> MQTTProtocolVersion:
        wanted = self.options.protocol
        if wanted == "3.1.1" or (self._may_fall_back and str(broker) in self.stats.refused_protocol_5):
            return paho.MQTTv311
        return paho.MQTTv5

    def _new_client(self, protocol: MQTTProtocolVersion) -> paho.Client:
        v5 = protocol == paho.MQTTv5
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.options.client_id,
            protocol=protocol,
            clean_session=None if v5 else False,
            manual_ack=True,
            reconnect_on_failure=False,
        )
        if self.options.tls is not None:
            client.tls_set_context(self.options.tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _session(self, broker: BrokerUrl) -> None:
        protocol = self._protocol_for(broker)
        if self.options.share and protocol != paho.MQTTv5:
            raise SessionRefused(f"{broker} does not speak MQTT 5, which shared subscriptions (--share) need")
        client = self._new_client(protocol)
        self._connack, self._shared_available = None, True
        if protocol == paho.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.options.session_expiry_s
            props.ReceiveMaximum = self.options.receive_maximum
            client.connect(
                broker.host, broker.port, self.options.keepalive_s, clean_start=False, properties=props
            )
        else:
            client.connect(broker.host, broker.port, self.options.keepalive_s)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acknowledgements are tiny and urgent
        connack = self._wait_connack(client, broker, protocol)
        if connack.is_failure:
            if protocol == paho.MQTTv5 and connack.value in (0x84, 0x01) and self._may_fall_back:
                self._refuse_v5(broker, str(connack))
            raise ConnectionError(f"broker refused the connection: {connack}")
        if self.options.share and not self._shared_available:
            raise SessionRefused(
                f"{broker} has no shared subscriptions (CONNACK); run one ingest or drop --share"
            )
        self._generation += 1
        self._client = client
        self.stats.connects += 1
        self.stats.broker = str(broker)
        self.stats.protocol = "5" if protocol == paho.MQTTv5 else "3.1.1"
        self.stats.last_error = None
        try:
            self._subscribe(client, protocol)
            self._connected.set()
            log.info(
                "ingest: connected to %s (MQTT %s), subscribed to %s",
                broker,
                self.stats.protocol,
                ", ".join(self._filters()),
            )
            self._serve(client)
        finally:
            self._connected.clear()
            self._client = None
            self._generation += 1  # acknowledgements still queued belong to a connection that is gone

    def _wait_connack(
        self, client: paho.Client, broker: BrokerUrl, protocol: MQTTProtocolVersion
    ) -> ReasonCode:
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while True:
            if self._connack is not None:
                return self._connack
            if self._stop.is_set() or time.monotonic() > deadline:
                client.disconnect()
                raise ConnectionError("no CONNACK")
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS and self._connack is None:
                if protocol == paho.MQTTv5 and self._may_fall_back:
                    self._refuse_v5(broker, "closed the connection")
                # 3.1.1 closed too: the broker was not refusing MQTT 5 after all; try 5 next time
                self.stats.refused_protocol_5.discard(str(broker))
                raise ConnectionError("connection closed before CONNACK")

    def _refuse_v5(self, broker: BrokerUrl, why: str) -> None:
        self.stats.refused_protocol_5.add(str(broker))
        log.info("ingest: %s refused MQTT 5 (%s); using MQTT 3.1.1 with it", broker, why)
        raise ProtocolRefused(why)

    def _filters(self) -> list[str]:
        share = self.options.share
        return [f"$share/{share}/{f}" if share else f for f in self.options.filters]

    def _subscribe(self, client: paho.Client, protocol: MQTTProtocolVersion) -> None:
        """Subscribe on every connection (a session the broker lost, or one made before a filter was
        added, would otherwise receive nothing) and wait for every SUBACK."""
        self._pending_subs, self._refused = {}, []
        for topic in self._filters():
            if protocol == paho.MQTTv5:
                # retained messages only for a new subscription: a resumed session needs no replay
                options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
                _, mid = client.subscribe(topic, options=options)
            else:
                _, mid = client.subscribe(topic, qos=1)
            if mid is not None:
                self._pending_subs[mid] = topic
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while self._pending_subs:
            if self._stop.is_set():
                return
            if time.monotonic() > deadline:
                raise ConnectionError("no SUBACK")
            if client.loop(timeout=0.1) != paho.MQTT_ERR_SUCCESS:
                raise ConnectionError("connection lost while subscribing")
        if self._refused:
            raise SessionRefused(
                f"the broker refused or downgraded the subscription to {', '.join(self._refused)}: "
                "check that the operator identity may read the fleet's topics (broker ACL)"
            )

    def _serve(self, client: paho.Client) -> None:
        while not self._stop.is_set():
            self._send_acks(client)
            rc = client.loop(timeout=LOOP_S)
            if rc != paho.MQTT_ERR_SUCCESS:
                self.stats.last_error = f"network loop: {paho.error_string(rc)}"
                return
        self._send_acks(client)
        client.disconnect()  # a normal DISCONNECT keeps the persistent session
        client.loop(timeout=0.2)

    def _send_acks(self, client: paho.Client) -> None:
        generation = self._generation
        while self._acks:
            gen, mid, qos = self._acks.popleft()
            if gen != generation:
                self.stats.stale_acks += 1
                continue
            client.ack(mid, qos)
            self.stats.acked += 1

    # -- paho callbacks (on this thread, inside client.loop) ----------------------------------------
    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack = reason_code
        if properties is not None and getattr(properties, "SharedSubscriptionAvailable", 1) == 0:
            self._shared_available = False

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: Any,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
            log.warning("ingest: disconnected from %s (%s)", self.stats.broker, reason_code)
        self._connected.clear()

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        topic = self._pending_subs.pop(mid, "?")
        if any(rc.is_failure or rc.value == 0 for rc in reason_codes):  # failure, or granted QoS 0 only
            self._refused.append(topic)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if self._draining.is_set():
            return  # not taken and not acknowledged: the broker keeps it for the next session
        degraded = False
        props = getattr(message, "properties", None)
        if props is not None:
            degraded = ("vigil-degraded", "1") in (getattr(props, "UserProperty", None) or [])
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers check topics are UTF-8; if one did not, quarantine it as is
            topic = bytes(message._topic).decode("utf-8", "replace")
        incoming = Incoming(topic, bytes(message.payload), time.time(), bool(message.retain), degraded)
        self.stats.received += 1
        try:
            self.deliver(Delivery(self._generation, message.mid, message.qos, incoming))
        except Exception:  # never let one message break the session (it would come back, again and again)
            log.exception("ingest: could not hand over a message on %s", topic)
