"""From pole to database on real parts: a provisioned fleet, Mosquitto running the configuration
`vigil-provision broker-config` generated (mutual TLS, ACL, persistence, sized queues), three real
agents publishing, and `vigil-fleet ingest` with the operator's certificate storing into SQLite.

Everything goes wrong on the way: the ingest is killed -9 three times (once while catching up, once
right after connecting), two agents are killed -9 and started again, the broker is restarted cleanly
while the ingest is away. Afterwards `vigil-fleet gaps` is empty for every node and the database
holds every seq the nodes ever accepted exactly once, with the ids they sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")
pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from provisioning.cli import main as provision
from tests.brokers import free_port, mosquitto_binary, wait_port
from tests.fleet_support import (
    Agents,
    check_stored_exactly,
    events_received,
    fleet_cli,
    kill9,
    start_ingest,
    wait_for,
)

NODES = ("pole-a", "pole-b", "pole-c")


class MosquittoRig:
    """The provisioned fleet, Mosquitto with its generated configuration, and the ingest."""

    def __init__(self, root: Path) -> None:
        mosquitto_binary()  # skips with the reason when Mosquitto is not installed
        self.root = root
        self.fleet = root / "fleet"
        self.port = free_port()
        self.url = f"mqtts://localhost:{self.port}"
        self.db = f"sqlite:///{root / 'fleet.db'}"
        self.broker: subprocess.Popen[bytes] | None = None
        self.ingest: subprocess.Popen[bytes] | None = None
        self.log = root / "ingest.log"
        self.agents = Agents(self.fleet, root / "agents")
        self._provision("init-ca", "--broker", self.url, "--name", "e2e-city")
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

    def start_broker(self) -> None:
        with (self.root / "mosquitto.log").open("ab") as log:
            conf = self.fleet / "broker" / "mosquitto.conf"
            self.broker = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.port, proc=self.broker)

    def restart_broker_cleanly(self) -> None:
        """SIGTERM (systemctl restart): Mosquitto saves its persistent state, then starts from it."""
        assert self.broker is not None
        self.broker.send_signal(signal.SIGTERM)
        self.broker.wait(30)
        self.start_broker()

    def start_ingest(self) -> None:
        self.ingest = start_ingest(
            "--fleet", str(self.fleet), "--operator", "backoffice", "--db", self.db, log=self.log
        )

    def connections(self) -> int:
        return self.log.read_text().count("ingest: connected") if self.log.exists() else 0

    def stored(self) -> int:
        return sum(events_received(self.db).values())

    def close(self) -> None:
        self.agents.close()
        if self.ingest is not None:
            kill9(self.ingest)
        if self.broker is not None and self.broker.poll() is None:
            self.broker.kill()
            self.broker.wait(10)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[MosquittoRig]:
    r = MosquittoRig(tmp_path)
    yield r
    r.close()


@pytest.mark.slow
def test_every_event_lands_in_the_database_exactly_once_through_crashes_and_restarts(rig: MosquittoRig):
    agents = rig.agents
    rig.start_broker()
    rig.start_ingest()
    wait_for(lambda: rig.connections() == 1, 30, "the ingest's session")
    for i, node in enumerate(NODES):
        agents.start(node, seed=20 + i)
    wait_for(lambda: rig.stored() >= 30, 90, "events in the database")

    assert rig.ingest is not None
    kill9(rig.ingest)  # 1: the ingest dies mid-stream; its session keeps collecting
    mark = agents.published()
    wait_for(lambda: agents.published() >= mark + 30, 60, "more events while the ingest is away")
    agents.kill("pole-a")  # a node dies too, with whatever was in flight
    agents.start("pole-a", seed=40)
    rig.restart_broker_cleanly()  # with the ingest away: its queued messages must survive the restart
    mark = agents.published()
    wait_for(lambda: agents.published() >= mark + 30, 90, "events after the broker restart")
    rig.start_ingest()
    wait_for(lambda: rig.connections() == 2, 30, "the ingest's session again")

    mark = rig.stored()
    wait_for(lambda: rig.stored() >= mark + 10, 60, "the ingest catching up")
    kill9(rig.ingest)  # 2: while catching up
    agents.kill("pole-b")
    agents.start("pole-b", seed=41)
    rig.start_ingest()
    wait_for(lambda: rig.connections() == 3, 30, "the ingest's session a third time")
    kill9(rig.ingest)  # 3: right after connecting
    rig.start_ingest()
    wait_for(lambda: rig.connections() == 4, 30, "the ingest's session a fourth time")

    for node in NODES:  # the nodes stop; what their spools still hold goes out now
        agents.stop(node)
    accepted = {node: agents.drain(node, rig.url) for node in NODES}
    assert all(n > 20 for n in accepted.values()), accepted
    wait_for(lambda: events_received(rig.db) == accepted, 120, "every accepted event stored")

    res = fleet_cli("gaps", "--db", rig.db, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["nodes"] == {
        n: {"received": a, "max_seq": a, "missing": []} for n, a in accepted.items()
    }
    figures = check_stored_exactly(rig.db, agents, accepted)
    status = json.loads(fleet_cli("status", "--db", rig.db, "--json").stdout)["nodes"]
    assert {r["node"] for r in status} == set(NODES)
    assert all(r["agent"] and r["open_gaps"] == 0 and r["state"] == "offline" for r in status), status
    print(f"accepted {accepted}, each stored once; {figures}")
