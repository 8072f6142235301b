"""`vigil-fleet ingest` as a process against a real Mosquitto: killed -9 at random moments it loses
nothing and stores nothing twice (it acknowledges only after its commit); bad input is quarantined
while it keeps going; several processes share one stream; the database may crash under it."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

from fleet.store import reader
from fleet.store.db import Database
from tests.brokers import Mosquitto
from tests.fleet_support import (
    Publisher,
    dumps,
    event,
    fleet_cli,
    jpeg,
    kill9,
    start_ingest,
    wait_for,
)
from tests.postgres import PostgresServer

NODES = ("pole-1", "pole-2", "pole-3")
KILLS = 12


@pytest.fixture
def broker(tmp_path: Path):
    # Mosquitto's default bound for an absent session's queue (1000 messages) is what
    # `vigil-provision broker-config` sizes from the fleet; past it, messages are dropped silently.
    b = Mosquitto(tmp_path / "broker", extra="max_queued_messages 100000\n").start()
    yield b
    b.stop()


def connected(url: str, name: str) -> bool:
    """The ingest's heartbeat says its session is up (subscribed): from now on the broker keeps its messages."""
    try:
        db = Database.open(url, create=False)
    except Exception:
        return False
    try:
        rows = [i for i in reader.ingesters(db) if i["name"] == name]
        return bool(rows and rows[0]["connected"] and time.time() - rows[0]["heartbeat_at"] < 10)
    finally:
        db.close()


def stored(url: str) -> dict[str, list[int]]:
    db = Database.open(url, create=False)
    try:
        rows = db.all("SELECT node, seq FROM events ORDER BY node, seq")
    finally:
        db.close()
    out: dict[str, list[int]] = {}
    for node, seq in rows:
        out.setdefault(node, []).append(int(seq))
    return out


def publish_stream(
    url: str,
    count: int | None,
    *,
    stop: threading.Event | None = None,
    pace_s: float = 0.0,
    every_thumb: int = 5,
    client: str = "nodes",
    first: int = 1,
) -> dict[str, list[str]]:
    """Publish events `first`..`count` per node (or until `stop`), a thumbnail every `every_thumb`,
    each waited for until its PUBACK, `pace_s` between rounds; the ids sent, per node."""
    publisher = Publisher(url, client)
    sent: dict[str, list[str]] = {n: [] for n in NODES}
    seq = first
    try:
        while (count is None or seq <= count) and not (stop is not None and stop.is_set()):
            for node in NODES:
                image = jpeg(seq) if seq % every_thumb == 0 else None
                body = event(node, seq, thumb=image)
                publisher.publish(f"vigil/{node}/events", dumps(body))
                if image is not None:
                    publisher.publish(f"vigil/{node}/thumbs/{body['id']}", image)
                sent[node].append(body["id"])
            seq += 1
            if pace_s and stop is not None:
                stop.wait(pace_s)  # a steady stream, like nodes, rather than one burst
    finally:
        publisher.close()
    return sent


def test_killed_at_random_moments_it_loses_nothing_and_stores_nothing_twice(
    broker: Mosquitto, tmp_path: Path
):
    """Events stream in while the ingest is killed -9 again and again, each time at a random moment after
    it connected (mid-batch, between a commit and its acknowledgements, while catching up)."""
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    args = ["--broker", broker.url, "--db", db, "--client-id", "ingest-k", "--batch", "50"]
    log = tmp_path / "ingest.log"
    proc = start_ingest(*args, log=log)
    wait_for(lambda: connected(db, "ingest-k"), 30, "the ingest to connect")
    stop = threading.Event()
    sent: dict[str, list[str]] = {}
    feeder = threading.Thread(
        target=lambda: sent.update(publish_stream(broker.url, None, stop=stop, pace_s=0.01)), daemon=True
    )
    feeder.start()
    rng = random.Random(14)
    try:
        for kill in range(KILLS):
            wait_for(
                lambda kill=kill: log.read_text().count("ingest: connected") > kill,
                30,
                "the ingest to connect",
            )
            stop.wait(rng.uniform(0.0, 0.6))
            kill9(proc)
            proc = start_ingest(*args, log=log)
        stop.set()
        feeder.join(60)
        per_node = len(sent["pole-1"])
        want = {n: list(range(1, per_node + 1)) for n in NODES}
        wait_for(lambda: stored(db) == want, 60, "every event stored")
    finally:
        kill9(proc)
    database = Database.open(db, create=False)
    try:
        assert database.scalar("SELECT COUNT(*) FROM events") == 3 * per_node  # each once: no duplicate rows
        ids = {r[0] for r in database.all("SELECT id FROM events")}
        assert ids == {i for node in NODES for i in sent[node]}  # the ids the nodes sent
        assert reader.gaps_report(database) == {
            "nodes": {n: {"received": per_node, "max_seq": per_node, "missing": []} for n in NODES}
        }
        assert database.scalar("SELECT COUNT(*) FROM thumbs WHERE state = 'ok'") == 3 * (per_node // 5)
        assert database.scalar("SELECT COUNT(*) FROM quarantine") == 0
        duplicates = database.scalar("SELECT SUM(duplicates) FROM nodes")
    finally:
        database.close()
    print(
        f"{KILLS} kills, {3 * per_node} events stored once; {duplicates} re-deliveries of stored events recognised"
    )


def test_bad_messages_are_quarantined_and_the_ingest_keeps_going(broker: Mosquitto, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    proc = start_ingest(
        "--broker", broker.url, "--db", db, "--client-id", "ingest-q", log=tmp_path / "ingest.log"
    )
    try:
        wait_for(lambda: connected(db, "ingest-q"), 30, "the ingest to connect")
        publisher = Publisher(broker.url, "chaos")
        image = jpeg(1)
        good = event("pole-1", 1, thumb=image)
        try:
            for topic, payload in (
                ("vigil/pole-1/events", b"\xff\xfe\x00garbage"),
                ("vigil/pole-1/events", b'{"schema": "vigil.event/1"}'),
                ("vigil/pole-1/events", dumps(event("pole-2", 5))),
                ("vigil/pole-1/events", b"[" * 70000),
                ("vigil/pole-1/thumbs/" + good["id"], b"not a jpeg"),
                ("vigil/pole-1/status", b'{"state": 3}'),
                ("vigil/pole-1/thumbs/" + good["id"], jpeg(2)),  # before its event, and not the one it names
                ("vigil/pole-1/events", dumps(good)),
                ("vigil/pole-1/thumbs/" + good["id"], image),
                ("vigil/pole-1/events", dumps(event("pole-1", 2))),
            ):
                publisher.publish(topic, payload)
        finally:
            publisher.close()
        wait_for(lambda: stored(db).get("pole-1") == [1, 2], 30, "the good events")
        res = fleet_cli("quarantine", "--db", db, "--json")
        assert res.returncode == 0, res.stderr
        counts = json.loads(res.stdout)["counts"]
        assert counts == {
            "not_json": 1,
            "schema": 2,
            "node_mismatch": 1,
            "oversized": 1,
            "not_jpeg": 1,
            "thumb_mismatch": 1,
        }
        assert proc.poll() is None, "the ingest died on bad input"
        text = fleet_cli("quarantine", "--db", db).stdout
        assert "published on pole-1's topic but says node 'pole-2'" in text
    finally:
        kill9(proc)


def test_gaps_alarm_and_the_query_commands(broker: Mosquitto, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    log = tmp_path / "ingest.log"
    proc = start_ingest(
        "--broker", broker.url, "--db", db, "--client-id", "ingest-g", "--gap-alarm-after", "1s", log=log
    )
    try:
        wait_for(lambda: connected(db, "ingest-g"), 30, "the ingest to connect")
        publisher = Publisher(broker.url, "pole-1")
        try:
            publisher.publish(
                "vigil/pole-1/status", b'{"state":"online","node":"pole-1","agent":"0.1.0"}', retain=True
            )
            for seq in (1, 2, 4):
                publisher.publish(
                    "vigil/pole-1/events",
                    dumps(event("pole-1", seq, type="tamper" if seq == 4 else "object_appeared")),
                )

            def alarms() -> int:
                database = Database.open(db, create=False)
                try:
                    return sum(r.alarms for r in reader.nodes_overview(database))
                finally:
                    database.close()

            wait_for(alarms, 30, "the gap alarm")
            res = fleet_cli("status", "--db", db, "--json")
            assert res.returncode == 0, res.stderr
            row = json.loads(res.stdout)["nodes"][0]
            assert (row["node"], row["state"], row["open_gaps"], row["missing"], row["alarms"]) == (
                "pole-1",
                "online",
                1,
                1,
                1,
            )
            assert "ALARM pole-1: events seq 3..3 (1) missing" in log.read_text()
            gaps = json.loads(fleet_cli("gaps", "--db", db, "--json").stdout)
            assert gaps == {"nodes": {"pole-1": {"received": 3, "max_seq": 4, "missing": [[3, 3]]}}}
            assert "1 missing: 3" in fleet_cli("gaps", "--db", db).stdout
            publisher.publish("vigil/pole-1/events", dumps(event("pole-1", 3)))
            wait_for(lambda: alarms() == 0, 30, "the alarm to clear")
        finally:
            publisher.close()
        gaps = json.loads(fleet_cli("gaps", "--db", db, "--json").stdout)
        assert gaps == {"nodes": {"pole-1": {"received": 4, "max_seq": 4, "missing": []}}}
        lines = fleet_cli("events", "--db", db, "--json", "--node", "pole-1").stdout.splitlines()
        assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]  # event time, then seq
        tamper = fleet_cli("events", "--db", db, "--json", "--type", "tamper").stdout.splitlines()
        assert [json.loads(line)["seq"] for line in tamper] == [4]
        human = fleet_cli("status", "--db", db).stdout
        assert "pole-1" in human and "online" in human
        missing = fleet_cli("status", "--db", str(tmp_path / "nope.db"))
        assert missing.returncode == 1 and "must start with sqlite:///" in missing.stderr
        absent = fleet_cli("status", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
        assert (
            absent.returncode == 1
            and "no fleet database" in absent.stderr
            and "Traceback" not in absent.stderr
        )
    finally:
        kill9(proc)


def test_several_ingest_processes_share_the_stream_into_postgresql(
    broker: Mosquitto, tmp_path: Path, pg_server: PostgresServer
):
    db = pg_server.create_database()
    procs = [
        start_ingest(
            "--broker",
            broker.url,
            "--db",
            db,
            "--client-id",
            f"ingest-{i}",
            "--share",
            "backoffice",
            log=tmp_path / f"ingest-{i}.log",
        )
        for i in (1, 2)
    ]
    try:
        for i in (1, 2):
            wait_for(lambda i=i: connected(db, f"ingest-{i}"), 30, f"ingest-{i} to connect")
        publish_stream(broker.url, 100, every_thumb=10)
        want = {n: list(range(1, 101)) for n in NODES}
        wait_for(lambda: stored(db) == want, 60, "every event stored")
        database = Database.open(db, create=False)
        try:
            assert database.scalar("SELECT COUNT(*) FROM events") == 300
            assert database.scalar("SELECT COUNT(*) FROM thumbs WHERE state = 'ok'") == 30
            assert reader.gaps_report(database)["nodes"]["pole-2"] == {
                "received": 100,
                "max_seq": 100,
                "missing": [],
            }
            wait_for(
                lambda: all(i["stats"].get("stored", 0) for i in reader.ingesters(database)),
                20,
                "both heartbeats",
            )
            shares = {i["name"]: i["stats"]["stored"] for i in reader.ingesters(database)}
        finally:
            database.close()
        assert set(shares) == {"ingest-1", "ingest-2"} and all(shares.values()), shares  # both took part
        assert sum(shares.values()) == 300
    finally:
        for proc in procs:
            kill9(proc)


def test_a_database_crash_under_the_ingest_loses_nothing(
    broker: Mosquitto, tmp_path: Path, pg_server: PostgresServer
):
    db = pg_server.create_database()
    log = tmp_path / "ingest.log"
    proc = start_ingest("--broker", broker.url, "--db", db, "--client-id", "ingest-pg", log=log)
    try:
        wait_for(lambda: connected(db, "ingest-pg"), 30, "the ingest to connect")
        publish_stream(broker.url, 60)
        wait_for(lambda: sum(map(len, stored(db).values())) == 180, 30, "the first events stored")
        pg_server.crash()  # every connection drops; what arrives now cannot be committed, so is not acknowledged
        publish_stream(broker.url, 120, first=61)
        pg_server.start()
        want = {n: list(range(1, 121)) for n in NODES}
        wait_for(lambda: stored(db) == want, 90, "every event stored after the database came back")
        assert proc.poll() is None
        assert "database:" in log.read_text()  # it said what happened
        database = Database.open(db, create=False)
        try:
            assert database.scalar("SELECT COUNT(*) FROM events") == 360
        finally:
            database.close()
    finally:
        kill9(proc)
