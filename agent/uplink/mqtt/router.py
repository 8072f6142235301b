"""Messages the node receives (commands) handed to whoever subscribed for them, in the order the
broker sent them, on the uplink thread."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as paho

log = logging.getLogger(__name__)

HELD = 64  # messages held for a handler that has not subscribed yet

MessageHandler = Callable[[str, bytes], None]


class InboundRouter:
    """Handlers by topic filter under the node's base. A persistent session delivers what was queued
    for the node right after CONNACK, possibly before the stage that handles it is up: such messages
    are held (bounded, oldest dropped with a warning) and handed over once a handler subscribes."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._handlers: list[tuple[str, MessageHandler]] = []
        self._held: deque[tuple[str, bytes]] = deque(maxlen=HELD)
        self._lock = threading.Lock()

    def add(self, suffix: str, handler: MessageHandler) -> None:
        with self._lock:
            self._handlers.append((suffix, handler))

    def suffixes(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(suffix for suffix, _ in self._handlers))

    def _handlers_for(self, topic: str) -> list[MessageHandler]:
        with self._lock:
            return [
                h for suffix, h in self._handlers if paho.topic_matches_sub(f"{self.base}/{suffix}", topic)
            ]

    def deliver(self, topic: str, payload: bytes) -> None:
        self.hand_over_held()  # older messages first
        handlers = self._handlers_for(topic)
        if not handlers:
            if len(self._held) == self._held.maxlen:
                log.warning("uplink: %d messages wait for a handler; dropping the oldest", len(self._held))
            self._held.append((topic, payload))
        for handler in handlers:
            self._call(handler, topic, payload)

    def hand_over_held(self) -> None:
        """Deliver, in arrival order, held messages that now have a handler."""
        if not self._held:
            return
        still: deque[tuple[str, bytes]] = deque(maxlen=HELD)
        while self._held:
            topic, payload = self._held.popleft()
            handlers = self._handlers_for(topic)
            if not handlers:
                still.append((topic, payload))
            for handler in handlers:
                self._call(handler, topic, payload)
        self._held = still

    def _call(self, handler: MessageHandler, topic: str, payload: bytes) -> None:
        try:
            handler(topic[len(self.base) + 1 :], payload)
        except Exception:
            log.exception("handler for %s failed", topic)
