"""The ingest: the MQTT session, a bounded hand-over queue and one writer thread that stores messages
in batches and only then acknowledges them.

Why this shape: the broker keeps a message until it is acknowledged, so the acknowledgement must
mean "in the database". The writer takes what has arrived (up to `batch_max` messages), stores it
in one transaction, and hands the acknowledgements to the MQTT thread after the commit. Killed at
any moment, the ingest loses nothing (unacknowledged messages come again when its persistent
session resumes) and stores nothing twice (every write is keyed; see fleet.store.writer).

The queue is bounded: the broker sends at most its in-flight window unacknowledged (MQTT 5 Receive
Maximum, Mosquitto's `max_inflight_messages`, RabbitMQ's `mqtt.prefetch`), so it never grows past a
few windows; if it does fill (the database stalls), the MQTT thread waits, and the broker holds the
rest. While the database is unreachable the writer retries the same batch with backoff; a message
the database refuses on its own is quarantined with reason `store_error`, never dropped.

Between batches the writer also raises gap alarms, writes a heartbeat (the page shows every ingest
process) and prunes old telemetry.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.ingest.mqtt import Delivery, MqttSession, SessionOptions
from fleet.store.db import Database
from fleet.store.rows import Outcome
from fleet.store.writer import BatchWriter
from fleet.wire import Parsed, Rejected, WireParser

log = logging.getLogger(__name__)

STORE_ERROR = "store_error"


@dataclass
class IngestOptions:
    gap_alarm_s: float = 900.0
    batch_max: int = 500
    heartbeat_s: float = 5.0
    sweep_s: float = 1.0
    telemetry_days: float = 30.0
    queue_size: int = 2000


@dataclass
class IngestStats:
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    thumbs: int = 0
    records: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    alarms: int = 0
    db_errors: int = 0
    last_batch: int = 0
    last_commit_ms: float | None = None
    last_error: str | None = None


class Ingest:
    """`start()` / `stop()`; `status()` for the heartbeat and logs."""

    name = "ingest"

    def __init__(
        self,
        db: Database,
        parser: WireParser,
        session: SessionOptions,
        options: IngestOptions,
        name: str | None = None,
    ) -> None:
        self.db = db
        self.parser = parser
        self.options = options
        self.ingest_name = name or session.client_id
        self.writer = BatchWriter(db, parser.prefix)
        self.queue: queue.Queue[Delivery] = queue.Queue(
            maxsize=max(options.queue_size, 2 * session.receive_maximum)
        )
        self.session = MqttSession(session, self._deliver)
        self.stats = IngestStats()
        self.started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_sweep = self._next_heartbeat = self._next_prune = 0.0
        self._quarantine_logged: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Ingest:
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()
        self.session.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages, store and acknowledge what was taken, then disconnect (the session stays)."""
        self.session.drain()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.session.stop(timeout)
        try:
            self._heartbeat(final=True)
        except Exception as exc:
            log.debug("ingest: last heartbeat not written: %s", exc)

    @property
    def fatal(self) -> str | None:
        return self.session.stats.fatal

    def status(self) -> dict[str, Any]:
        s = self.session.stats
        return {
            **{k: v for k, v in asdict(self.stats).items() if k != "quarantined"},
            "quarantined": dict(self.stats.quarantined),
            "queue": self.queue.qsize(),
            "received": s.received,
            "acked": s.acked,
            "stale_acks": s.stale_acks,
            "connects": s.connects,
            "disconnects": s.disconnects,
            "protocol": s.protocol,
            "mqtt_error": s.last_error,
        }

    # -- hand-over from the MQTT thread ----------------------------------------------------------------
    def _deliver(self, delivery: Delivery) -> bool:
        while True:
            try:
                self.queue.put(delivery, timeout=1.0)
                return True
            except queue.Full:
                if self._stop.is_set():
                    return False
                log.warning(
                    "ingest: %d messages wait for the database; the broker holds the rest", self.queue.qsize()
                )

    # -- the writer -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._store(batch)
            self._housekeeping()
            if self._stop.is_set() and self.queue.empty():
                return

    def _take(self) -> list[Delivery]:
        try:
            first = self.queue.get(timeout=0.25)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.options.batch_max:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _store(self, batch: list[Delivery]) -> None:
        parsed: list[Parsed] = [self.parser.parse(d.message) for d in batch]
        items = [(d.message, p) for d, p in zip(batch, parsed, strict=True)]
        backoff = 0.2
        while True:
            started = time.monotonic()
            try:
                outcome = self.writer.apply(items)
            except Exception as exc:
                if not self._retryable(exc):
                    self._one_by_one(batch, parsed)
                    return
                self.stats.db_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                log.warning("ingest: database: %s; retrying in %.1f s", self.stats.last_error, backoff)
                self._stop.wait(backoff)
                if not self._try_reconnect() and self._stop.is_set():
                    return  # stopping with the database down: nothing acknowledged, the broker keeps it all
                backoff = min(backoff * 2, 5.0)
                continue
            self.stats.last_commit_ms = round((time.monotonic() - started) * 1000, 1)
            self.session.ack(batch)
            self._account(outcome, len(batch))
            return

    def _retryable(self, exc: Exception) -> bool:
        try:
            return self.db.retryable(exc)
        except Exception:
            return False

    def _try_reconnect(self) -> bool:
        try:
            self.db.reconnect()
            return True
        except Exception as exc:
            self.stats.last_error = f"reconnect: {exc}"
            return False

    def _one_by_one(self, batch: list[Delivery], parsed: list[Parsed]) -> None:
        """A batch the database refused for a reason other than availability: store each message alone,
        and quarantine the one it refuses (with the database's reason), so nothing blocks the stream."""
        for delivery, item in zip(batch, parsed, strict=True):
            try:
                outcome = self.writer.apply([(delivery.message, item)])
            except Exception as exc:
                if self._retryable(exc):
                    self._store([delivery])  # the database went away meanwhile: wait for it
                    continue
                log.error("ingest: the database refused a message on %s: %s", delivery.message.topic, exc)
                node = getattr(item, "node", None)
                refusal = Rejected(STORE_ERROR, f"{type(exc).__name__}: {str(exc).strip()[:300]}", node)
                try:
                    outcome = self.writer.apply([(delivery.message, refusal)])
                except Exception:
                    log.exception("ingest: cannot quarantine it either; it stays with the broker")
                    continue
            self.session.ack([delivery])
            self._account(outcome, 1)

    def _account(self, outcome: Outcome, size: int) -> None:
        s = self.stats
        s.batches += 1
        s.last_batch = size
        s.stored += outcome.stored
        s.duplicates += outcome.duplicates
        s.thumbs += outcome.thumbs
        s.records += outcome.records
        s.quarantined.update(outcome.quarantined)
        for line in outcome.alarms:
            s.alarms += 1
            log.warning("ALARM %s", line)
        now = time.monotonic()
        for reason, count in outcome.quarantined.items():
            if now - self._quarantine_logged.get(reason, -1e9) > 60:
                self._quarantine_logged[reason] = now
                log.warning(
                    "ingest: quarantined %d message(s): %s (total %d; `vigil-fleet quarantine`)",
                    count,
                    reason,
                    s.quarantined[reason],
                )

    # -- between batches --------------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        now = time.monotonic()
        try:
            if now >= self._next_sweep:
                self._next_sweep = now + self.options.sweep_s
                for line in self.writer.sweep_gaps(self.options.gap_alarm_s):
                    self.stats.alarms += 1
                    log.warning("ALARM %s", line)
            if now >= self._next_heartbeat:
                self._next_heartbeat = now + self.options.heartbeat_s
                self._heartbeat()
            if now >= self._next_prune:
                self._next_prune = now + 600
                self._prune()
        except Exception as exc:  # the database is down: the batch loop reports and retries it
            self.stats.last_error = f"housekeeping: {type(exc).__name__}: {str(exc).strip()[:200]}"
            log.debug("ingest: %s", self.stats.last_error)
            self._try_reconnect()

    def _heartbeat(self, final: bool = False) -> None:
        now = time.time()
        with self.db.tx():
            self.db.execute(
                "INSERT INTO ingesters (name, host, pid, started_at, heartbeat_at, broker, connected, stats) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET host = excluded.host, "
                "pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                "broker = excluded.broker, connected = excluded.connected, stats = excluded.stats",
                (
                    self.ingest_name,
                    socket.gethostname(),
                    os.getpid(),
                    self.started_at,
                    now,
                    self.session.stats.broker or "",
                    int(self.session.connected and not final),
                    json.dumps(self.status(), separators=(",", ":"), default=str),
                ),
            )

    def _prune(self) -> None:
        cutoff = time.time() - self.options.telemetry_days * 86400
        with self.db.tx():
            self.db.execute("DELETE FROM telemetry WHERE received_at < ?", (cutoff,))
            self.db.execute("DELETE FROM status_history WHERE received_at < ?", (cutoff,))
