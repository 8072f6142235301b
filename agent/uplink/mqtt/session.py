"""One MQTT connection, from CONNECT to its end: a fresh paho client, its network thread, its
CONNACK, its packet ids and what its callbacks saw.

Nothing outlives a session. paho numbers publishes per client (a new client starts again at 1) and
reports a publish as done only on its PUBACK; so the publisher opens one Session per connection and
settles in-flight records only with acknowledgements this very session received. Whatever was in
flight when a connection ended stays in the spool and goes again on the next one.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.uplink.mqtt.settings import PublisherSettings

CONNACK_TIMEOUT_S = 15.0


def _paho_has_puback_hooks() -> bool:
    """Whether this paho release has the two private methods _Client relies on, as in 2.0 to 2.2."""
    handle, report = (getattr(paho.Client, name, None) for name in ("_handle_pubackcomp", "_do_on_publish"))
    if handle is None or report is None:
        return False
    return list(inspect.signature(report).parameters) == ["self", "mid", "reason_code", "properties"]


_FAST_PUBACK = _paho_has_puback_hooks()


class _Client(paho.Client):
    """paho's client with a cheaper PUBACK for the common case.

    paho decodes every PUBACK into a fresh ReasonCode and Properties object: about two fifths of its
    network thread's time while a backlog drains (py-spy, bench/uplink.py), and that thread is the
    drain's bottleneck. A PUBACK that only accepts (a packet id; in MQTT 5 maybe a success code, 0x00
    or 0x10 "no matching subscribers", and no properties) is handed to on_publish with a shared
    ReasonCode instead. Anything else (a refusal with its reason, properties, a malformed packet)
    goes through paho's own decoding, and so does everything on a paho release without the methods
    this relies on."""

    _ACCEPTED: ClassVar[dict[int, ReasonCode]] = {
        code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0x00, 0x10)
    }
    _NO_PROPERTIES: ClassVar[Properties] = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        if not _FAST_PUBACK or cmd != "PUBACK":
            return super()._handle_pubackcomp(cmd)
        packet = self._in_packet["packet"]
        if len(packet) == 2:
            reason = self._ACCEPTED[0]
        elif len(packet) == 3 and self._protocol == paho.MQTTv5 and packet[2] in self._ACCEPTED:
            reason = self._ACCEPTED[packet[2]]
        else:
            return super()._handle_pubackcomp(cmd)
        mid = packet[0] << 8 | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, self._NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


@dataclass(frozen=True)
class Ack:
    """A PUBACK that did not accept its publish (MQTT 5): the packet id and the broker's reason."""

    mid: int
    code: int
    reason: str  # the reason code's name


@dataclass
class SessionEvents:
    """What the callbacks saw since the publisher last looked (drained by the publisher's thread)."""

    acked: list[int] = field(default_factory=list)  # packet ids the broker accepted (the common case)
    refused: list[Ack] = field(default_factory=list)  # PUBACKs with a failure reason code (MQTT 5)
    subacks: list[tuple[int, bool, str]] = field(default_factory=list)  # mid, refused, reason codes
    messages: list[tuple[str, bytes]] = field(default_factory=list)


class Session:
    """`open()`, then `publish()`/`subscribe()`/`take_events()` from the publisher's thread, then
    `close()`. paho's own network thread (one per session, named after the node) moves the bytes, so
    sending and receiving overlap; it never reconnects by itself — a new connection is a new Session."""

    def __init__(
        self,
        settings: PublisherSettings,
        will: bytes,
        notify: Callable[[], None] = lambda: None,
        *,
        ack_batch: int | None = None,
    ) -> None:
        self.settings = settings
        self.connected = False
        self.refusal: str | None = None  # why the broker refused the connection
        self.ended: str | None = None  # why the connection ended
        self.end_code = 0  # the MQTT reason code it ended with (0: none given)
        self.max_packet_size: int | None = None  # MQTT 5: the broker's Maximum Packet Size, if it said
        self.socket_error: str | None = None  # the last socket/TLS error paho's thread logged
        self.events = SessionEvents()
        self._awaiting_connack = False
        self._notify = notify  # something arrived (a PUBACK, a message, the end of the connection)
        # PUBACKs are handed over in batches of `ack_batch` (default: `inflight`) while paho still holds
        # more than that many unacknowledged publishes: waking the publisher for every PUBACK while
        # paho has plenty left to send only makes the two threads fight over the GIL (bench/uplink.py).
        # Once it holds fewer, every PUBACK wakes it, so a live event is never waited on.
        self._ack_batch = max(1, ack_batch or settings.inflight)
        self._coalescing: bool | None = None
        # publishes handed to paho (written by the publisher's thread only) and PUBACKs seen (by paho's
        # thread only): their difference is what paho holds, with no lock taken per publish
        self._handed = 0
        self._answered = 0
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._looping = False
        self.client = self._client(will)

    def _client(self, will: bytes) -> paho.Client:
        s = self.settings
        client = _Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.node_id,
            protocol=paho.MQTTv5 if s.v5 else paho.MQTTv311,
            # a persistent session keeps the cmd/# subscription (and commands sent meanwhile) while away
            clean_session=None if s.v5 else s.session_expiry_s == 0,
        )
        # on the wire unacknowledged at once (brokers bound it: Mosquitto's max_inflight_messages); more
        # may wait in paho's queue, sent from its thread as PUBACKs arrive
        client.max_inflight_messages_set(max(s.inflight, 1))
        client.max_queued_messages_set(0)
        client.connect_timeout = 10.0
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.broker.tls:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(s.ca_file) if s.ca_file else None
            )
            context.check_hostname = s.check_hostname
            if s.cert_file and s.key_file:
                context.load_cert_chain(str(s.cert_file), str(s.key_file))
            client.tls_set_context(context)
        client.will_set(f"{s.base}/status", will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.enable_logger(_error_catcher(self))  # not on_log: paho would format every packet's line for it
        return client

    # -- connecting -------------------------------------------------------------------------------
    def open(self, stop: threading.Event) -> None:
        """Connect and wait for the CONNACK; ConnectionError with the reason otherwise."""
        s = self.settings
        try:
            if s.v5:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = s.session_expiry_s
                self.client.connect(
                    s.broker.host,
                    s.broker.port,
                    keepalive=s.keepalive_s,
                    clean_start=s.session_expiry_s == 0,
                    properties=properties,
                )
            else:
                self.client.connect(s.broker.host, s.broker.port, keepalive=s.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectionError(f"cannot connect: {exc}") from None
        self.coalesce(False)
        self._awaiting_connack = True
        self.client.loop_start()
        self._looping = True
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while not self.connected and self.refusal is None and self.ended is None:
            if stop.is_set() or time.monotonic() > deadline:
                self._awaiting_connack = False
                self.close()
                raise ConnectionError("no CONNACK from the broker")
            self._changed.wait(0.1)
            self._changed.clear()
        self._awaiting_connack = False
        if not self.connected:
            self.close()
            raise ConnectionError(self.refusal or self.ended or "connection closed before CONNACK")

    # -- while connected ----------------------------------------------------------------------------
    def publish(
        self, topic: str, payload: bytes, *, retain: bool, properties: Properties | None = None
    ) -> int | None:
        """QoS 1; the packet id, or None when paho could not take it (the reason is in `ended`)."""
        self._handed += 1  # before paho has it: its thread may report the PUBACK before publish() returns
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self._handed -= 1
            self.ended = f"publish: {paho.error_string(info.rc)}"
            return None
        return info.mid

    def coalesce(self, on: bool) -> None:
        """Whether TCP may hold a small publish back to fill a segment (Nagle's algorithm).

        Off (TCP_NODELAY) by default: a live event goes onto the wire at once rather than waiting
        for the acknowledgement of what went before it. On while a backlog drains, i.e. while paho
        holds more publishes than it may have on the wire: the broker's PUBACKs then arrive all the
        time and release what was held within a round trip, while full segments cost both ends far
        fewer system calls per record (bench/uplink.py: the drain is about an eighth faster).
        Turning it off again sends whatever is held at once."""
        if on == self._coalescing:
            return
        self._coalescing = on
        sock = self.client.socket()
        if sock is not None and hasattr(sock, "setsockopt"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if on else 1)

    def subscribe(self, topic: str) -> int | None:
        _rc, mid = self.client.subscribe(topic, qos=1)
        return mid

    def take_events(self) -> SessionEvents:
        with self._lock:
            events, self.events = self.events, SessionEvents()
        return events

    def abort(self, reason: str) -> None:
        """End the connection now (e.g. no PUBACK for too long); nothing in flight counts as sent."""
        self.ended = reason
        self.close()

    def close(self, goodbye: tuple[str, bytes] | None = None, wait_s: float = 1.0) -> None:
        """Say goodbye (e.g. a retained offline status) if still connected, disconnect, and stop the
        network thread."""
        if self.connected and goodbye is not None:
            with contextlib.suppress(Exception):
                info = self.client.publish(goodbye[0], goodbye[1], qos=1, retain=True)
                info.wait_for_publish(wait_s)
        self.connected = False
        with contextlib.suppress(Exception):
            self.client.disconnect()
        if self._looping:
            self._looping = False
            self.client.loop_stop()

    # -- paho callbacks (on the session's network thread) -------------------------------------------
    def _wake(self) -> None:
        self._changed.set()
        self._notify()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, props: Any) -> None:
        self.max_packet_size = getattr(props, "MaximumPacketSize", None) if props is not None else None
        if reason_code.is_failure:
            self.refusal = f"broker refused the connection: {reason_code}"
            client.disconnect()  # paho's thread would otherwise retry by itself
        else:
            self.connected = True
        self._wake()

    def _on_disconnect(self, client: Any, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if self.connected:
            self.ended = self.ended or f"disconnected ({reason_code})"
            self.end_code = int(getattr(reason_code, "value", 0))
        elif self._awaiting_connack and self.refusal is None:
            # closed before any CONNACK: with TLS that is how a broker refuses a client certificate it
            # does not accept (or none); the socket error paho saw says which
            why = f": {self.socket_error}" if self.socket_error else ""
            self.ended = self.ended or f"the broker closed the connection before accepting it{why}"
        self.connected = False
        client.disconnect()  # no reconnect by paho's thread: the next connection is a new Session
        self._wake()

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, reason_code: Any, _props: Any) -> None:
        # one call per PUBACK on paho's thread, which is the drain's bottleneck: the accepted case is
        # one append of an int under the lock
        if getattr(reason_code, "is_failure", False):
            with self._lock:
                self.events.refused.append(Ack(mid, int(reason_code.value), str(reason_code)))
                self._answered += 1
            self._notify()
            return
        with self._lock:
            acked = self.events.acked
            acked.append(mid)
            self._answered += 1
            wake = len(acked) >= self._ack_batch or self._handed - self._answered <= self._ack_batch
        if wake:
            self._notify()

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, reason_codes: Any, _props: Any) -> None:
        refused = any(rc.is_failure for rc in reason_codes)
        with self._lock:
            self.events.subacks.append((mid, refused, ", ".join(str(rc) for rc in reason_codes)))
        self._notify()

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.events.messages.append((message.topic, bytes(message.payload)))
        self._notify()


class _SocketErrors(logging.Handler):
    """Keeps the last error paho's network thread logged (a TLS alert, a reset) on its session."""

    def __init__(self, session: Session) -> None:
        super().__init__(logging.ERROR)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        self.session.socket_error = record.getMessage()


def _error_catcher(session: Session) -> logging.Logger:
    """A private logger that lets only errors through, so paho formats nothing per packet."""
    logger = logging.Logger(f"{__name__}.paho", logging.ERROR)  # not registered: one per session
    logger.propagate = False
    logger.addHandler(_SocketErrors(session))
    return logger
