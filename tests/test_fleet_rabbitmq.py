"""The path for fleets that outgrow one broker, on real parts: a three-broker RabbitMQ cluster on this
machine (Debian's rabbitmq-server, one Erlang node name and port set each) running exactly the
configuration `vigil-provision broker-config --kind rabbitmq` generated (TLS, certificate login,
per-identity permissions, quorum queues, the CRL), three real agents (one per broker) and
`vigil-fleet ingest` given all three brokers.

Mid-stream the broker that holds the ingest's connection and the leader of its session queue is
killed -9 (with one agent connected to it): the ingest carries on through another broker, the
quorum queue elects a new leader, and once the broker is back and the nodes have drained, every
accepted event is in the database exactly once. Then the permissions and the CRL are shown to hold.

Marked `cluster`: three Erlang VMs on two cores take a few minutes, so `./scripts/test` leaves it
out and CI runs it as its own step (`./scripts/test -m cluster`)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")
pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from provisioning.cli import main as provision
from tests.brokers import free_port
from tests.fleet_support import (
    Agents,
    Publisher,
    check_stored_exactly,
    dumps,
    event,
    events_received,
    fleet_cli,
    kill9,
    start_ingest,
    wait_for,
)
from tests.rabbit import RabbitNode, cookie_home, need_rabbitmq

NODES = ("pole-a", "pole-b", "pole-c")
pytestmark = pytest.mark.cluster


class ClusterRig:
    def __init__(self, root: Path) -> None:
        need_rabbitmq()
        self.root = root
        self.fleet = root / "fleet"
        self.ports = [free_port() for _ in range(3)]
        names = [f"vigil{p}@localhost" for p in self.ports]
        self.urls = [f"mqtts://localhost:{p}" for p in self.ports]
        self.db = f"sqlite:///{root / 'fleet.db'}"
        self.log = root / "ingest.log"
        self.ingest = None
        self.agents = Agents(self.fleet, root / "agents")
        self._provision("init-ca", "--broker", self.urls[0], "--name", "cluster-city")
        for node in NODES:
            self._provision("add-node", node)
        self._provision("add-operator", "backoffice")
        home = cookie_home(root / "erlang")
        self.brokers: list[RabbitNode] = []
        for i, (port, name) in enumerate(zip(self.ports, names, strict=True)):
            out = root / f"broker-{i}"  # the same configuration, only the port differs (one machine)
            members = [arg for n in names for arg in ("--cluster-node", n)]
            self._provision(
                "broker-config",
                "--kind",
                "rabbitmq",
                "--out",
                str(out),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--host",
                "localhost",
                *members,
            )
            self.brokers.append(
                RabbitNode(
                    root / f"rabbit-{i}",
                    name=name,
                    config=out / "rabbitmq.conf",
                    plugins=out / "enabled_plugins",
                    advanced=out / "advanced.config",
                    cookie_home=home,
                    mqtt_port=port,
                )
            )

    def _provision(self, *args: str) -> None:
        assert provision(["--fleet", str(self.fleet), *args]) == 0

    def tls(self, identity: str, folder: str = "nodes") -> ssl.SSLContext:
        base = self.fleet / folder / identity
        cert, key = (
            (base / "node.crt", base / "node.key")
            if folder == "nodes"
            else (base / f"{identity}.crt", base / f"{identity}.key")
        )
        context = ssl.create_default_context(cafile=str(self.fleet / "ca" / "ca.crt"))
        context.load_cert_chain(str(cert), str(key))
        return context

    def close(self) -> None:
        self.agents.close()
        if self.ingest is not None:
            kill9(self.ingest)
        for broker in self.brokers:
            broker.kill()


def mqtt_connect(port: int, context: ssl.SSLContext, client_id: str) -> str:
    """One MQTT 3.1.1 CONNECT over TLS: "accepted" (CONNACK 0), "revoked" (the TLS alert the CRL check
    sends) or "refused: why"."""
    ident = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(ident).to_bytes(2, "big") + ident
    try:
        with (
            socket.create_connection(("localhost", port), timeout=15) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"\x10" + bytes([len(body)]) + body)
            reply = tls.recv(4)  # TLS 1.3 delivers a refused client certificate as an alert on this read
    except (ssl.SSLError, ConnectionError) as exc:
        return "revoked" if "revoked" in str(exc).lower() else f"refused: {exc}"
    return "accepted" if reply == b"\x20\x02\x00\x00" else f"refused: {reply!r}"


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[ClusterRig]:
    r = ClusterRig(tmp_path)
    yield r
    r.close()


def test_a_broker_killed_mid_stream_loses_nothing_and_permissions_hold(rig: ClusterRig):
    for broker in rig.brokers:
        broker.start()
    rig.brokers[0].wait_cluster(3)
    brokers = [arg for url in rig.urls for arg in ("--broker", url)]
    rig.ingest = start_ingest(
        "--fleet", str(rig.fleet), "--operator", "backoffice", "--db", rig.db, *brokers, log=rig.log
    )
    wait_for(
        lambda: "ingest: connected to " + rig.urls[0] in rig.log.read_text(), 60, "the ingest on broker 0"
    )
    queues = rig.brokers[1].ctl("list_queues", "name", "type", "--formatter", "json").stdout
    assert {"name": "mqtt-subscription-backofficeqos1", "type": "quorum"} in json.loads(queues)
    for i, node in enumerate(NODES):
        rig.agents.start(node, seed=60 + i, broker=rig.urls[i])  # one node per broker
    wait_for(lambda: sum(events_received(rig.db).values()) >= 30, 120, "events in the database")

    rig.brokers[0].kill()  # the ingest's broker, its session queue's leader, and pole-a's broker
    mark = sum(events_received(rig.db).values())
    wait_for(
        lambda: sum(events_received(rig.db).values()) >= mark + 20,
        120,
        "events stored through another broker",
    )
    assert rig.log.read_text().count("ingest: connected") >= 2
    rig.brokers[0].start()
    rig.brokers[1].wait_cluster(3)

    for node in NODES:
        rig.agents.stop(node)
    accepted = {node: rig.agents.drain(node, rig.urls[i]) for i, node in enumerate(NODES)}
    assert all(n > 10 for n in accepted.values()), accepted
    wait_for(lambda: events_received(rig.db) == accepted, 180, "every accepted event stored")
    figures = check_stored_exactly(rig.db, rig.agents, accepted)
    gaps = json.loads(fleet_cli("gaps", "--db", rig.db, "--json").stdout)["nodes"]
    assert all(not g["missing"] for g in gaps.values()), gaps

    # the permissions: a node writes only its own topics (RabbitMQ refuses and closes the connection)
    intruder = Publisher(rig.urls[1], "pole-a", tls=rig.tls("pole-a"))
    try:
        refused = intruder.client.publish("vigil/pole-b/events", dumps(event("pole-b", 999)), qos=1)
        refused.wait_for_publish(5)
        assert not refused.is_published()
    finally:
        intruder.close()
    own = Publisher(rig.urls[1], "pole-a", tls=rig.tls("pole-a"))
    try:
        own.publish("vigil/pole-a/status", b'{"state":"offline","node":"pole-a"}')  # its own: acknowledged
    finally:
        own.close()
    # ... and a revoked node is refused in the TLS handshake (the CRL), without restarting the brokers
    assert mqtt_connect(rig.ports[2], rig.tls("pole-b"), "pole-b") == "accepted"
    rig._provision("revoke", "pole-c")
    assert mqtt_connect(rig.ports[2], rig.tls("pole-c"), "pole-c") == "revoked"
    assert events_received(rig.db) == accepted  # nothing from the intruder arrived
    print(f"accepted {accepted}, each stored once through a broker crash; {figures}")


def test_operator_roles_hold_on_rabbitmq(tmp_path: Path):
    """The generated topic permissions carry the roles: a viewer may publish ping but not restart, an
    admin both (one broker of the generated configuration, the real `vigil-fleet cmd`)."""
    need_rabbitmq()
    fleet, port = tmp_path / "fleet", free_port()
    url = f"mqtts://localhost:{port}"

    def run(*args: str) -> None:
        assert provision(["--fleet", str(fleet), *args]) == 0, args

    run("init-ca", "--broker", url, "--name", "roles-city")
    run("add-node", "pole-a")
    run("add-operator", "bob", "--role", "viewer")
    run("add-operator", "alice", "--role", "admin")
    out = tmp_path / "broker"
    run("broker-config", "--kind", "rabbitmq", "--out", str(out), "--port", str(port), "--bind", "127.0.0.1",
        "--host", "localhost")
    broker = RabbitNode(tmp_path / "rabbit", name=f"vigil{port}@localhost", config=out / "rabbitmq.conf",
                        plugins=out / "enabled_plugins", advanced=out / "advanced.config",
                        cookie_home=cookie_home(tmp_path / "erlang"), mqtt_port=port)
    broker.start()
    try:
        def tls(name: str) -> ssl.SSLContext:
            folder = fleet / "operators" / name
            context = ssl.create_default_context(cafile=str(fleet / "ca" / "ca.crt"))
            context.load_cert_chain(str(folder / f"{name}.crt"), str(folder / f"{name}.key"))
            return context

        viewer = Publisher(url, "bob", tls=tls("bob"))
        try:
            refused = viewer.client.publish("vigil/pole-a/cmd/restart", b'{"id": "r1"}', qos=1)
            refused.wait_for_publish(5)
            assert not refused.is_published()  # RabbitMQ refuses it (and closes the connection)
        finally:
            viewer.close()
        viewer = Publisher(url, "bob", tls=tls("bob"))
        try:
            viewer.publish("vigil/pole-a/cmd/ping", b'{"id": "p1"}')  # acknowledged: a viewer may ping
        finally:
            viewer.close()
        admin = Publisher(url, "alice", tls=tls("alice"))
        try:
            admin.publish("vigil/pole-a/cmd/restart", b'{"id": "r2"}')
        finally:
            admin.close()
        res = fleet_cli("cmd", "pole-a", "restart", "--fleet", str(fleet), "--operator", "bob", "--timeout", "5s")
        assert res.returncode == 1 and "refused" in res.stdout, res.stdout + res.stderr
    finally:
        broker.kill()
