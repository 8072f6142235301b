"""The back office's storage, the same tests on SQLite and on a real PostgreSQL server: events stored
once whatever the re-deliveries, seq gaps per node (opened, split, closed, alarmed), thumbnails
checked against their event, deduplicated history, quarantine, and two writers at once."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

from fleet import wire
from fleet.commands.quarantine import replay
from fleet.errors import FleetError
from fleet.eventschema import EventValidator
from fleet.store import reader
from fleet.store.db import Database
from fleet.store.rows import Outcome
from fleet.store.writer import BatchWriter
from fleet.wire import Incoming, WireParser
from tests.fleet_support import dumps, event, jpeg

NOW = 1_800_000_000.0


class Store:
    """Messages in, the way the ingest does it: parse, then one transaction per batch."""

    def __init__(self, url: str, known: set[str] | None = None) -> None:
        self.db = Database.open(url)
        self.known = known
        self.parser = WireParser("vigil", EventValidator(), self._check)
        self.writer = BatchWriter(self.db, "vigil")

    def _check(self, node: str) -> str | None:
        return None if self.known is None or node in self.known else f"{node} is not in the inventory"

    def put(self, *messages: tuple[str, bytes] | tuple[str, bytes, dict], now: float = NOW) -> Outcome:
        items = []
        for message in messages:
            topic, payload = message[0], message[1]
            extra = message[2] if len(message) > 2 else {}
            incoming = Incoming(topic, payload, now, **extra)
            items.append((incoming, self.parser.parse(incoming)))
        return self.writer.apply(items, now)

    def events(self, node: str, seq: int, **kw) -> tuple[str, bytes]:
        return (f"vigil/{node}/events", dumps(event(node, seq, **kw)))

    def missing(self, node: str) -> list[list[int]]:
        return reader.gaps_report(self.db, node)["nodes"][node]["missing"]

    def count(self, sql: str, params: tuple = ()) -> int:
        return int(self.db.scalar(sql, params))


@pytest.fixture
def store(db_url: str):
    s = Store(db_url)
    yield s
    s.db.close()


def test_events_are_stored_once_whatever_the_redeliveries(store: Store):
    a, b = event("pole-1", 1), event("pole-1", 2)
    out = store.put(
        ("vigil/pole-1/events", dumps(a)),
        ("vigil/pole-1/events", dumps(b)),
        ("vigil/pole-1/events", dumps(a)),
    )
    assert (out.stored, out.duplicates) == (2, 1)
    again = {**b, "historical": True}  # a re-delivery after an outage carries the flag; same id
    out = store.put(("vigil/pole-1/events", dumps(a)), ("vigil/pole-1/events", dumps(again)))
    assert (out.stored, out.duplicates) == (0, 2)
    assert store.count("SELECT COUNT(*) FROM events") == 2
    rows = dict(store.db.all("SELECT id, body FROM events"))
    assert json.loads(rows[a["id"]]) == a and json.loads(rows[b["id"]]) == b  # first copy, exactly as sent
    report = reader.gaps_report(store.db)
    assert report == {"nodes": {"pole-1": {"received": 2, "max_seq": 2, "missing": []}}}


def test_gaps_open_split_and_close_as_late_events_arrive(store: Store):
    store.put(*(store.events("pole-1", s) for s in (1, 2, 5, 9)))
    assert store.missing("pole-1") == [[3, 4], [6, 8]]
    store.put(store.events("pole-1", 7))
    assert store.missing("pole-1") == [[3, 4], [6, 6], [8, 8]]
    store.put(store.events("pole-1", 4), store.events("pole-1", 3))
    assert store.missing("pole-1") == [[6, 6], [8, 8]]
    store.put(store.events("pole-1", 8), store.events("pole-1", 6), store.events("pole-2", 3))
    report = reader.gaps_report(store.db)["nodes"]
    assert report["pole-1"] == {"received": 9, "max_seq": 9, "missing": []}
    assert report["pole-2"] == {
        "received": 1,
        "max_seq": 3,
        "missing": [[1, 2]],
    }  # its first events never came


def test_a_gap_open_too_long_raises_an_alarm_which_clears_when_it_fills(store: Store):
    store.put(*(store.events("pole-1", s) for s in (1, 5)), now=NOW)
    assert store.writer.sweep_gaps(60, now=NOW + 59) == []
    lines = store.writer.sweep_gaps(60, now=NOW + 61)
    assert len(lines) == 1 and "seq 2..4 (3) missing" in lines[0]
    assert store.writer.sweep_gaps(60, now=NOW + 120) == []  # one alarm per gap, not one per sweep
    alarm = store.db.one("SELECT kind, detail, cleared_at FROM alarms")
    assert alarm[0] == "gap" and json.loads(alarm[1])["missing"] == 3 and alarm[2] is None
    assert reader.nodes_overview(store.db, NOW + 120)[0].alarms == 1
    store.put(store.events("pole-1", 3), now=NOW + 200)  # splits the gap; the alarm stays with both pieces
    assert store.missing("pole-1") == [[2, 2], [4, 4]]
    assert store.db.scalar("SELECT cleared_at FROM alarms") is None
    out = store.put(store.events("pole-1", 2), store.events("pole-1", 4), now=NOW + 300)
    assert store.missing("pole-1") == []
    assert store.db.scalar("SELECT cleared_at FROM alarms") == NOW + 300
    assert any("cleared" in line for line in out.alarms)
    assert reader.nodes_overview(store.db, NOW + 300)[0].alarms == 0


def test_seq_reuse_with_another_id_is_an_alarm_and_both_events_are_kept(store: Store):
    first, second = event("pole-1", 1), event("pole-1", 1)  # a node whose counter restarted
    store.put(("vigil/pole-1/events", dumps(first)))
    out = store.put(("vigil/pole-1/events", dumps(second)))
    assert out.stored == 1 and "seq 1 reused" in out.alarms[0]
    assert store.count("SELECT COUNT(*) FROM events WHERE node = 'pole-1' AND seq = 1") == 2
    kind, detail = store.db.one("SELECT kind, detail FROM alarms")
    assert kind == "seq_reuse" and set(json.loads(detail)["ids"]) == {first["id"], second["id"]}
    assert reader.gaps_report(store.db)["nodes"]["pole-1"]["received"] == 1  # one seq, received once


def test_the_same_id_under_another_seq_is_quarantined(store: Store):
    body = event("pole-1", 1)
    store.put(("vigil/pole-1/events", dumps(body)))
    out = store.put(("vigil/pole-1/events", dumps({**body, "seq": 2})))
    assert out.stored == 0 and out.quarantined == {wire.ID_CONFLICT: 1}
    assert store.count("SELECT COUNT(*) FROM events") == 1


def test_thumbnails_are_checked_against_their_event(store: Store):
    image, other = jpeg(1), jpeg(2)
    ok = event("pole-1", 1, thumb=image)
    store.put(("vigil/pole-1/events", dumps(ok)), (f"vigil/pole-1/thumbs/{ok['id']}", image))
    assert store.db.one("SELECT state, jpeg FROM thumbs WHERE event_id = ?", (ok["id"],)) == ("ok", image)

    wrong = event("pole-1", 2, thumb=image)  # a thumbnail that is not the one the event names
    out = store.put(("vigil/pole-1/events", dumps(wrong)), (f"vigil/pole-1/thumbs/{wrong['id']}", other))
    assert out.quarantined == {wire.THUMB_MISMATCH: 1}
    assert store.db.one("SELECT 1 FROM thumbs WHERE event_id = ?", (wrong["id"],)) is None
    assert bytes(store.db.scalar("SELECT payload FROM quarantine WHERE reason = 'thumb_mismatch'")) == other

    early = event("pole-1", 3, thumb=image)  # the thumbnail arrives first: kept pending, checked later
    store.put((f"vigil/pole-1/thumbs/{early['id']}", image))
    assert store.db.scalar("SELECT state FROM thumbs WHERE event_id = ?", (early["id"],)) == "pending"
    assert reader.thumbnail(store.db, early["id"])[1] == "pending"
    store.put(("vigil/pole-1/events", dumps(early)))
    assert store.db.scalar("SELECT state FROM thumbs WHERE event_id = ?", (early["id"],)) == "ok"

    early_wrong = event("pole-1", 4, thumb=image)
    store.put((f"vigil/pole-1/thumbs/{early_wrong['id']}", other))
    out = store.put(("vigil/pole-1/events", dumps(early_wrong)))
    assert out.quarantined == {wire.THUMB_MISMATCH: 1}
    assert store.db.one("SELECT 1 FROM thumbs WHERE event_id = ?", (early_wrong["id"],)) is None

    degraded = event("pole-1", 5, thumb=image)  # re-encoded on a slow link and flagged so (MQTT 5)
    store.put(
        ("vigil/pole-1/events", dumps(degraded)),
        (f"vigil/pole-1/thumbs/{degraded['id']}", other, {"degraded": True}),
    )
    assert store.db.scalar("SELECT state FROM thumbs WHERE event_id = ?", (degraded["id"],)) == "degraded"
    store.put(
        (f"vigil/pole-1/thumbs/{degraded['id']}", image)
    )  # the original after all: it replaces the copy
    assert store.db.one("SELECT state, jpeg FROM thumbs WHERE event_id = ?", (degraded["id"],)) == (
        "ok",
        image,
    )

    # MQTT 3.1.1 has no properties: a copy the node shrank names its original in a JPEG comment
    from agent.uplink.meter import mark_degraded

    marked = event("pole-1", 7, thumb=image)
    copy = mark_degraded(other, hashlib.sha256(image).hexdigest())
    store.put(("vigil/pole-1/events", dumps(marked)), (f"vigil/pole-1/thumbs/{marked['id']}", copy))
    assert store.db.scalar("SELECT state FROM thumbs WHERE event_id = ?", (marked["id"],)) == "degraded"
    early_marked = event("pole-1", 8, thumb=image)  # the same when the copy comes before its event
    store.put((f"vigil/pole-1/thumbs/{early_marked['id']}", copy))
    store.put(("vigil/pole-1/events", dumps(early_marked)))
    assert store.db.scalar("SELECT state FROM thumbs WHERE event_id = ?", (early_marked["id"],)) == "degraded"
    liar = event("pole-1", 9, thumb=image)  # a copy naming another original is not this event's
    out = store.put(
        ("vigil/pole-1/events", dumps(liar)),
        (f"vigil/pole-1/thumbs/{liar['id']}", mark_degraded(other, "0" * 64), {"degraded": True}),
    )
    assert out.quarantined == {wire.THUMB_MISMATCH: 1}

    none = event("pole-1", 6)  # no thumbnail announced
    out = store.put(("vigil/pole-1/events", dumps(none)), (f"vigil/pole-1/thumbs/{none['id']}", image))
    assert out.quarantined == {wire.THUMB_UNEXPECTED: 1}
    out = store.put((f"vigil/pole-2/thumbs/{ok['id']}", image))  # another node's event
    assert out.quarantined == {wire.NODE_MISMATCH: 1}
    assert store.put((f"vigil/pole-1/thumbs/{ok['id']}", image)).thumbs == 0  # a re-delivery


def test_status_telemetry_and_replies_are_kept_once_and_summarised(store: Store):
    online = b'{"state":"online","node":"pole-1","agent":"0.1.0","model":"yolox-nano"}'
    store.put(("vigil/pole-1/status", online, {"retain": True}))
    store.put(("vigil/pole-1/status", online, {"retain": True}))  # the broker replays it on subscribe
    assert store.count("SELECT COUNT(*) FROM status_history") == 1
    telemetry = {
        "schema": "vigil.telemetry/1",
        "node": "pole-1",
        "ts": "2026-05-01T10:00:00Z",
        "clock": {"source": "gnss", "trusted": True},
        "spool": {
            "depth": 42,
            "bytes": 1000,
            "classes": {"event": {"depth": 40, "bytes": 900, "drops": 0, "oldest_age_s": 125.0}},
        },
        "modem": {"state": "registered", "technology": "LTE", "operator": "Op", "rsrp_dbm": -101},
        "gnss": {
            "state": "fix",
            "mode": 3,  # as the agent sends it (NMEA fix mode)
            "sats": 9,
            "hdop": 0.9,
            "lat": 52.371,
            "lon": 4.895,
            "age_s": 1,
        },
        "versions": {"agent": "0.1.1", "model": "yolox-nano"},
    }
    store.put(
        ("vigil/pole-1/telemetry", dumps(telemetry)),
        ("vigil/pole-1/telemetry", dumps(telemetry)),
        now=NOW + 10,
    )
    assert store.count("SELECT COUNT(*) FROM telemetry") == 1
    reply = b'{"id":"op-1","command":"ping","status":"ok","message":"pong"}'
    store.put(("vigil/pole-1/cmd_result", reply), ("vigil/pole-1/cmd_result", reply))
    assert store.count("SELECT COUNT(*) FROM replies") == 1
    (row,) = reader.nodes_overview(store.db, NOW + 20)
    assert (row.state, row.agent, row.model) == ("online", "0.1.1", "yolox-nano")
    assert (row.backlog, row.backlog_oldest_s, row.signal_dbm, row.clock_trusted) == (42, 125.0, -101.0, True)
    assert row.link == "LTE Op" and row.gnss == "3d fix, 9 sats"
    assert (row.lat, row.lon, row.position) == (52.371, 4.895, "3d")
    assert (
        reader.nodes_overview(store.db, NOW + 10 + 301)[0].state == "silent"
    )  # online, but nothing for 5 min
    store.put(("vigil/pole-1/status", b'{"state":"offline","node":"pole-1"}'), now=NOW + 400)  # the last will
    assert reader.nodes_overview(store.db, NOW + 401)[0].state == "offline"
    assert store.count("SELECT COUNT(*) FROM status_history") == 2


def test_quarantine_keeps_what_was_refused_once_and_replays_it_later(store: Store):
    store.known = {"pole-1"}
    stranger = event("pole-9", 1)
    garbage = ("vigil/pole-1/events", b"\x00\x01 not json")
    out = store.put(("vigil/pole-9/events", dumps(stranger)), garbage, garbage)
    assert out.quarantined == {wire.UNKNOWN_NODE: 1, wire.NOT_JSON: 1}  # the second garbage is a re-delivery
    report = reader.quarantine(store.db)
    assert report["counts"] == {wire.NOT_JSON: 1, wire.UNKNOWN_NODE: 1}
    assert {q["topic"] for q in report["latest"]} == {"vigil/pole-9/events", "vigil/pole-1/events"}
    assert store.count("SELECT COUNT(*) FROM events") == 0
    store.known = {"pole-1", "pole-9"}  # the node was added to the inventory after it started publishing
    assert replay(store.db, store.parser, None) == (1, 1)
    assert reader.gaps_report(store.db)["nodes"]["pole-9"] == {"received": 1, "max_seq": 1, "missing": []}
    assert reader.quarantine(store.db)["counts"] == {wire.NOT_JSON: 1}


def test_two_writers_at_once_keep_each_nodes_accounting_exact(db_url: str):
    """Two ingest processes sharing a database (shared subscriptions): interleaved batches of the same
    nodes, with overlaps (re-deliveries reach both), end with every seq stored once and no gap."""
    stores = [Store(db_url), Store(db_url)]
    bodies = {n: [event(n, s) for s in range(1, 121)] for n in ("pole-1", "pole-2", "pole-3")}
    errors: list[BaseException] = []

    def write(index: int) -> None:
        s = stores[index]
        try:
            for start in range(0, 120, 10):
                batch = []
                for node, items in bodies.items():
                    for body in items[start : start + 10]:
                        if body["seq"] % 2 == index or body["seq"] % 7 == 0:  # multiples of 7: both
                            batch.append((f"vigil/{node}/events", dumps(body)))
                s.put(*batch[::-1] if index else batch)  # opposite orders: gaps open and close all the time
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    report = reader.gaps_report(stores[0].db)["nodes"]
    assert report == {n: {"received": 120, "max_seq": 120, "missing": []} for n in bodies}
    assert stores[0].count("SELECT COUNT(*) FROM events") == 360
    for s in stores:
        s.db.close()


def test_event_queries_in_time_order(store: Store):
    for seq in range(1, 8):
        kind = "tamper" if seq == 4 else "object_appeared"
        store.put(store.events("pole-1", seq, ts=f"2026-05-01T10:00:0{seq}.000Z", type=kind))
    latest = [json.loads(t)["seq"] for t in reader.events(store.db, limit=3)]
    assert latest == [5, 6, 7]
    since = wire.parse_ts("2026-05-01T10:00:03Z")
    assert [json.loads(t)["seq"] for t in reader.events(store.db, since=since, limit=2)] == [3, 4]
    assert [json.loads(t)["seq"] for t in reader.events(store.db, kind="tamper")] == [4]
    assert reader.events(store.db, node="pole-2") == []


def test_a_database_written_by_a_newer_version_is_refused(store: Store):
    with store.db.tx():
        store.db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(FleetError, match="newer vigil-fleet"):
        Database.open(store.db.url)
