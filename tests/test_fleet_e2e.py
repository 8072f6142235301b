"""From pole to database on real parts: a provisioned fleet, Mosquitto running the configuration
`vigil-provision broker-config` generated (mutual TLS, ACL, persistence, sized queues), three real
agents publishing, and `vigil-fleet ingest` with the operator's certificate storing into SQLite.

Everything goes wrong on the way: the ingest is killed -9 three times (once while the broker is
restarted behind its back), two agents are killed -9 and started again, the broker is restarted
cleanly while the ingest is away. Afterwards `vigil-fleet gaps` is empty for every node and the
database holds every seq the nodes ever accepted exactly once, with the ids they sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")
pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from agent.config.schema import TlsConfig, UplinkConfig
from agent.uplink.mqtt import MqttPublisher
from agent.uplink.spool import Spool
from fleet.store import reader
from fleet.store.db import Database
from provisioning.cli import main as provision
from tests.brokers import free_port, mosquitto_binary, wait_port
from tests.fleet_support import ROOT, agent_env, fleet_cli, kill9, start_ingest, wait_for

NODES = ("pole-a", "pole-b", "pole-c")


class FleetRig:
    """The provisioned fleet, its broker, the agents and the ingest, each restartable."""

    def __init__(self, root: Path) -> None:
        mosquitto_binary()  # skips with the reason when Mosquitto is not installed
        self.root = root
        self.fleet = root / "fleet"
        self.port = free_port()
        self.db = f"sqlite:///{root / 'fleet.db'}"
        self.broker_proc: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.ingest: subprocess.Popen[bytes] | None = None
        self.ingest_log = root / "ingest.log"
        self._provision("init-ca", "--broker", f"mqtts://localhost:{self.port}", "--name", "e2e-city")
        for i, node in enumerate(NODES):
            self._provision(
                "add-node", node, "--site", f"Market St {i}", "--lat", f"52.37{i}", "--lon", f"4.89{i}"
            )
        self._provision("add-operator", "backoffice")
        user = ["--user", "root"] if os.geteuid() == 0 else []
        (root / "mosquitto-data").mkdir()
        self._provision(
            "broker-config",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--host",
            "localhost",
            "--persistence-dir",
            str(root / "mosquitto-data"),
            *user,
        )

    def _provision(self, *args: str) -> None:
        assert provision(["--fleet", str(self.fleet), *args]) == 0

    # -- broker ------------------------------------------------------------------------------------------
    def start_broker(self) -> None:
        with (self.root / "mosquitto.log").open("ab") as log:
            conf = self.fleet / "broker" / "mosquitto.conf"
            self.broker_proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.port, proc=self.broker_proc)

    def restart_broker_cleanly(self) -> None:
        """SIGTERM (systemctl restart): Mosquitto saves its persistent state, then starts from it."""
        assert self.broker_proc is not None
        self.broker_proc.send_signal(signal.SIGTERM)
        self.broker_proc.wait(30)
        self.start_broker()

    # -- agents ------------------------------------------------------------------------------------------
    def state(self, node: str) -> Path:
        return self.root / "agents" / node

    def start_agent(self, node: str, seed: int) -> None:
        bundle = self.fleet / "nodes" / node
        env = agent_env(
            VIGIL_UPLINK__TLS__CA_FILE=str(bundle / "ca.crt"),
            VIGIL_UPLINK__TLS__CERT_FILE=str(bundle / "node.crt"),
            VIGIL_UPLINK__TLS__KEY_FILE=str(bundle / "node.key"),
            VIGIL_UPLINK__RECONNECT_MAX_S="2",
            VIGIL_EVENTS__STDOUT="true",  # every accepted event as a JSON line: what the node sent
        )
        self.state(node).mkdir(parents=True, exist_ok=True)
        with (
            (self.state(node) / "events.jsonl").open("ab") as out,
            (self.state(node) / "agent.log").open("ab") as err,
        ):
            self.agents[node] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "--config",
                    str(bundle / "config.toml"),
                    "--source",
                    f"synthetic:{seed}",
                    "--no-realtime",
                    "--state-dir",
                    str(self.state(node)),
                    "--http",
                    "off",
                ],
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=env,
            )

    def printed(self, node: str) -> list[dict]:
        path = self.state(node) / "events.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # the last line of an agent killed while printing it
        return out

    def drain(self, node: str) -> int:
        """Publish what a stopped agent left in its spool, with the agent's own spool and publisher;
        returns the last event seq the node ever accepted."""
        bundle = self.fleet / "nodes" / node
        spool = Spool(self.state(node) / "spool.db").start()
        accepted = spool.seq("events")
        tls = TlsConfig(
            ca_file=bundle / "ca.crt", cert_file=bundle / "node.crt", key_file=bundle / "node.key"
        )
        cfg = UplinkConfig(broker=f"mqtts://localhost:{self.port}", tls=tls, reconnect_min_s=0.2)
        publisher = MqttPublisher(spool, cfg, node).start()
        try:
            assert spool.wait_drained(60), f"{node}: the spool did not drain"
        finally:
            publisher.stop()
            spool.stop()
        return accepted

    # -- ingest ------------------------------------------------------------------------------------------
    def start_ingest(self) -> None:
        self.ingest = start_ingest(
            "--fleet", str(self.fleet), "--operator", "backoffice", "--db", self.db, log=self.ingest_log
        )

    def ingest_connections(self) -> int:
        return self.ingest_log.read_text().count("ingest: connected") if self.ingest_log.exists() else 0

    def stored(self) -> int:
        try:
            db = Database.open(self.db, create=False)
        except Exception:
            return 0
        try:
            return int(db.scalar("SELECT COUNT(*) FROM events"))
        finally:
            db.close()

    def published(self) -> int:
        return sum(len(self.printed(n)) for n in NODES)

    def stop(self) -> None:
        for proc in [*self.agents.values(), self.ingest]:
            if proc is not None:
                kill9(proc)
        if self.broker_proc is not None and self.broker_proc.poll() is None:
            self.broker_proc.kill()
            self.broker_proc.wait(10)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[FleetRig]:
    r = FleetRig(tmp_path)
    yield r
    r.stop()


@pytest.mark.slow
def test_every_event_lands_in_the_database_exactly_once_through_crashes_and_restarts(rig: FleetRig):
    rig.start_broker()
    rig.start_ingest()
    wait_for(lambda: rig.ingest_connections() == 1, 30, "the ingest's session")
    for i, node in enumerate(NODES):
        rig.start_agent(node, seed=20 + i)
    wait_for(lambda: rig.stored() >= 30, 90, "events in the database")

    kill9(rig.ingest)  # 1: the ingest dies mid-stream; its session keeps collecting
    mark = rig.published()
    wait_for(lambda: rig.published() >= mark + 30, 60, "more events while the ingest is away")
    kill9(rig.agents["pole-a"])  # a node dies too, with whatever was in flight
    rig.start_agent("pole-a", seed=40)
    rig.restart_broker_cleanly()  # with the ingest away: its queued messages must survive the restart
    mark = rig.published()
    wait_for(lambda: rig.published() >= mark + 30, 90, "events after the broker restart")
    rig.start_ingest()
    wait_for(lambda: rig.ingest_connections() == 2, 30, "the ingest's session again")

    mark = rig.stored()
    wait_for(lambda: rig.stored() >= mark + 10, 60, "the ingest catching up")
    kill9(rig.ingest)  # 2: while catching up
    kill9(rig.agents["pole-b"])
    rig.start_agent("pole-b", seed=41)
    rig.start_ingest()
    wait_for(lambda: rig.ingest_connections() == 3, 30, "the ingest's session a third time")
    kill9(rig.ingest)  # 3: right after connecting
    rig.start_ingest()
    wait_for(lambda: rig.ingest_connections() == 4, 30, "the ingest's session a fourth time")

    for node in NODES:  # the nodes stop; what their spools still hold goes out now
        rig.agents[node].send_signal(signal.SIGTERM)
        rig.agents[node].wait(30)
    accepted = {node: rig.drain(node) for node in NODES}
    assert all(n > 20 for n in accepted.values()), accepted

    def complete() -> bool:
        db = Database.open(rig.db, create=False)
        try:
            report = reader.gaps_report(db)["nodes"]
        finally:
            db.close()
        return all(report.get(n, {}).get("received") == accepted[n] for n in NODES)

    wait_for(complete, 120, "every accepted event stored")
    res = fleet_cli("gaps", "--db", rig.db, "--json")
    assert res.returncode == 0, res.stderr
    gaps = json.loads(res.stdout)["nodes"]
    assert gaps == {n: {"received": accepted[n], "max_seq": accepted[n], "missing": []} for n in NODES}
    db = Database.open(rig.db, create=False)
    try:
        rows = db.all("SELECT node, seq, id FROM events")
        assert len(rows) == sum(accepted.values())  # each seq exactly once
        stored_ids = {(node, int(seq)): event_id for node, seq, event_id in rows}
        for node in NODES:
            assert sorted(s for n, s in stored_ids if n == node) == list(range(1, accepted[node] + 1))
            for body in rig.printed(node):  # the ids the node sent for its seqs
                assert stored_ids[(node, body["seq"])] == body["id"]
        assert db.scalar("SELECT COUNT(*) FROM quarantine") == 0
        thumbs = db.scalar("SELECT COUNT(*) FROM thumbs WHERE state = 'ok'")
        announced = db.scalar("SELECT COUNT(*) FROM events WHERE thumb_sha256 IS NOT NULL")
        duplicates = db.scalar("SELECT SUM(duplicates) FROM nodes")
    finally:
        db.close()
    assert thumbs and thumbs == announced  # every announced thumbnail arrived and matched
    status = json.loads(fleet_cli("status", "--db", rig.db, "--json").stdout)["nodes"]
    assert {r["node"] for r in status} == set(NODES)
    assert all(r["agent"] and r["open_gaps"] == 0 and r["state"] == "offline" for r in status), status
    print(
        f"accepted {accepted}, stored once each; {duplicates} re-deliveries recognised; {thumbs} thumbnails"
    )
