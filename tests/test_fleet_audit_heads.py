"""The back office keeps each node's audit-log heads and raises an alarm when one goes back or forks
(issue 13, item 7), on SQLite and on a real PostgreSQL server. Telemetry arrives out of order (a
node sends live records before its backlog) and twice (at-least-once delivery): neither is an alarm."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

from fleet.store import reader
from fleet.store.auditheads import heads
from tests.test_fleet_store import Store

NODE = "pole-1"


def mac(n: int, variant: str = "a") -> str:
    return (variant * 8 + f"{n:056x}")[:64]


def telemetry(tseq: int, aseq: int, head: str, anchor: tuple[int, str] | None = None) -> tuple[str, bytes]:
    audit: dict[str, object] = {"seq": aseq, "mac": head}
    if anchor is not None:
        audit["anchor"] = {"seq": anchor[0], "mac": anchor[1]}
    body = {"schema": "vigil.telemetry/1", "node": NODE, "seq": tseq, "audit": audit}
    return (f"vigil/{NODE}/telemetry", json.dumps(body).encode())


@pytest.fixture
def store(db_url: str):
    s = Store(db_url)
    yield s
    s.db.close()


def audit_alarms(store: Store) -> list[str]:
    return [r[0] for r in store.db.all("SELECT kind FROM alarms WHERE node = ? ORDER BY id", (NODE,))]


def test_a_growing_log_out_of_order_and_redelivered_raises_nothing(store: Store):
    store.put(telemetry(1, 3, mac(3)), telemetry(3, 5, mac(5)))
    store.put(telemetry(2, 4, mac(4)))  # the backlog arrives after the live record
    store.put(telemetry(3, 5, mac(5)), telemetry(4, 5, mac(5), anchor=(5, mac(5))))  # again, and the same head
    assert audit_alarms(store) == []
    assert [h["seq"] for h in heads(store.db, NODE)] == [3, 4, 5]
    row = next(r for r in reader.nodes_overview(store.db) if r.node == NODE)
    assert row.audit_seq == 5 and row.audit_alarm is None


def test_a_head_that_goes_back_is_a_rewind(store: Store):
    store.put(telemetry(1, 7, mac(7)))
    store.put(telemetry(2, 4, mac(4)))  # a later record, an older log: entries 5..7 are gone
    assert audit_alarms(store) == ["audit_rewind"]
    row = next(r for r in reader.nodes_overview(store.db) if r.node == NODE)
    assert row.audit_alarm == "audit_rewind" and row.alarms == 1
    store.put(telemetry(2, 4, mac(4)))  # the same record delivered again raises nothing new
    assert audit_alarms(store) == ["audit_rewind"]


def test_the_same_entry_with_another_hash_is_a_fork(store: Store):
    store.put(telemetry(1, 7, mac(7)))
    store.put(telemetry(2, 7, mac(7, "b")))
    assert audit_alarms(store) == ["audit_fork"]


def test_a_log_rewritten_behind_its_published_head_shows_in_the_anchor(store: Store):
    store.put(telemetry(1, 7, mac(7)))
    store.put(telemetry(2, 9, mac(9), anchor=(7, mac(7, "c"))))  # grew past it, but entry 7 is not the same
    assert audit_alarms(store) == ["audit_fork"]
