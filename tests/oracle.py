"""An independent witness of what reached the broker: a subscriber with a persistent session that
records every event's (node, seq, id), for the loss tests.

It is deliberately not the agent's code: its own paho client, its own session (clean_session off,
so the broker queues for it across its own disconnects and across broker restarts), reconnecting by
itself. A broker started with `Mosquitto(persistent=True)` keeps that queue across clean restarts and
never drops from it.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


class SeqOracle:
    def __init__(self, url: str, *, topic: str = "vigil/+/events", client_id: str = "seq-oracle") -> None:
        host, port = url.split("://")[1].rsplit(":", 1)
        self._cond = threading.Condition()
        self.ids: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.messages = 0
        self.garbage = 0
        self._subscribed = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the oracle could not subscribe")

    def _on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        node = message.topic.split("/")[1]
        with self._cond:
            self.messages += 1
            try:
                event = json.loads(message.payload)
                self.ids[node][int(event["seq"])].add(str(event["id"]))
            except (ValueError, KeyError, TypeError):
                self.garbage += 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[SeqOracle], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def seqs(self, node: str) -> dict[int, set[str]]:
        with self._cond:
            return {seq: set(ids) for seq, ids in self.ids[node].items()}

    def has_all(self, node: str, last: int) -> bool:
        """Every seq from 1 to `last` arrived (call under wait_for, or on a snapshot)."""
        got = self.ids[node]
        return all(seq in got for seq in range(1, last + 1))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def missing_runs(present: set[int], last: int) -> list[tuple[int, int]]:
    """The seqs absent from 1..last, as (first, last) runs: what a loss report names."""
    runs: list[tuple[int, int]] = []
    for seq in range(1, last + 1):
        if seq in present:
            continue
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs
