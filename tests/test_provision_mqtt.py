"""A provisioned fleet against a real Mosquitto with real mutual TLS: the generated broker
configuration, ACL and CRL do what they promise, and the agent delivers events with a node bundle.

"Not delivered" is proven without sleeping: after the forbidden message the same connection sends
an allowed marker; Mosquitto handles one connection's packets in order and queues to each
subscriber in order, so once the marker has arrived the forbidden message would have arrived first.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from provisioning.cli import main as provision
from tests.brokers import free_port, mosquitto_binary, wait_port
from tests.conftest import ROOT, agent_env

WAIT = 10.0


@dataclass
class Identity:
    cert: Path
    key: Path


class Client:
    """A paho client with waitable outcomes: connected or refused, SUBACKs, PUBACKs, messages."""

    def __init__(
        self, port: int, ca: Path, identity: Identity | None, *, client_id: str = "", v5: bool = False
    ) -> None:
        self.port = port
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.pubacks: dict[int, object] = {}
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.decided = threading.Event()  # set by whichever comes first: CONNACK success or a refusal
        self.refusal: str | None = None
        self.subacks: queue.Queue[list] = queue.Queue()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        context = ssl.create_default_context(cafile=str(ca))
        if identity is not None:
            context.load_cert_chain(str(identity.cert), str(identity.key))
        self.client.tls_set_context(context)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = lambda *_: self._closed("connect failed")
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(codes)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, bool(m.retain)))
        self.client.on_publish = lambda c, u, mid, reason, props: self.pubacks.__setitem__(mid, reason)

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self._closed(f"CONNACK {reason}")
        else:
            self.connected.set()
            self.decided.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self._closed(f"disconnected: {reason}")

    def _closed(self, why: str) -> None:
        self.refusal = self.refusal or why
        self.closed.set()
        self.decided.set()

    def start(self) -> Client:
        try:
            self.client.connect("localhost", self.port, keepalive=30)
        except (OSError, ssl.SSLError) as exc:  # the handshake itself failed (TLS 1.2, or no certificate)
            self._closed(f"{type(exc).__name__}: {exc}")
            return self
        self.client.loop_start()
        return self

    def outcome(self) -> str:
        """'connected' or 'refused', whichever the broker decides first."""
        self.decided.wait(WAIT)
        if self.connected.is_set() and not self.closed.is_set():
            return "connected"
        return "refused" if self.closed.is_set() else "undecided"

    def connect_ok(self) -> Client:
        assert self.start().outcome() == "connected", self.refusal
        return self

    def subscribe(self, topic: str) -> list:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> paho.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT)
        return info

    def receive_until(self, marker: bytes) -> list[tuple[str, bytes]]:
        """Every live message up to and including the one whose payload is `marker` (retained
        messages left by earlier tests are skipped)."""
        seen = []
        while True:
            topic, payload, retained = self.messages.get(timeout=WAIT)
            if retained:
                continue
            seen.append((topic, payload))
            if payload == marker:
                return seen

    def close(self) -> None:
        self.client.disconnect()  # first, so the network thread leaves its select() at once
        self.client.loop_stop()


class Broker:
    """Mosquitto run with the configuration broker-config generated (killed in teardown)."""

    def __init__(self, conf: Path, port: int, log: Path) -> None:
        self.conf, self.port, self.log = conf, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@dataclass
class Fleet:
    root: Path
    port: int
    ca: Path

    def node(self, name: str) -> Identity:
        folder = self.root / "nodes" / name
        return Identity(folder / "node.crt", folder / "node.key")

    def operator(self, name: str = "backoffice") -> Identity:
        folder = self.root / "operators" / name
        return Identity(folder / f"{name}.crt", folder / f"{name}.key")

    def client(self, identity: Identity | None, **kw) -> Client:
        return Client(self.port, self.ca, identity, **kw)

    def provision(self, *args: str) -> None:
        assert provision(["--fleet", str(self.root), *args]) == 0

    def broker(self) -> Broker:
        return Broker(self.root / "broker" / "mosquitto.conf", self.port, self.root / "mosquitto.log")


def make_fleet(folder: Path) -> Fleet:
    mosquitto_binary()  # skips with the reason when Mosquitto is not installed
    fleet = Fleet(folder, free_port(), folder / "ca" / "ca.crt")
    fleet.provision("init-ca", "--broker", f"mqtts://localhost:{fleet.port}", "--name", "test-city")
    for node in ("pole-a", "pole-b", "pole-c"):
        fleet.provision("add-node", node, "--site", f"{node} site", "--lat", "52.37", "--lon", "4.89")
    fleet.provision("add-operator", "backoffice")
    user = ["--user", "root"] if os.geteuid() == 0 else []  # Mosquitto will not run as root without it
    # run on its own (not as a Debian drop-in), Mosquitto needs to be told where to save its state
    (folder / "mosquitto-data").mkdir()
    data = ["--persistence-dir", str(folder / "mosquitto-data")]
    fleet.provision(
        "broker-config", "--port", str(fleet.port), "--bind", "127.0.0.1", "--host", "localhost", *user, *data
    )
    return fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path_factory.mktemp("mqtt-fleet"))
    broker = fleet.broker().start()
    yield fleet
    broker.stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def test_node_publishes_on_its_own_topics_and_the_operator_receives_them(fleet: Fleet, clients):
    operator = fleet.client(fleet.operator()).connect_ok()
    clients.append(operator)
    assert operator.subscribe("vigil/#")[0].value == 1
    node = fleet.client(fleet.node("pole-a")).connect_ok()
    clients.append(node)
    topics = [
        "vigil/pole-a/events",
        "vigil/pole-a/thumbs/0193-e1",
        "vigil/pole-a/telemetry",
        "vigil/pole-a/cmd_result",
    ]
    for topic in topics:
        node.publish(topic, topic.encode())
    node.publish("vigil/pole-a/status", b"online", retain=True)
    received = operator.receive_until(b"online")
    assert [t for t, _ in received] == [*topics, "vigil/pole-a/status"]


def test_node_cannot_publish_on_another_nodes_topics(fleet: Fleet, clients):
    operator = fleet.client(fleet.operator()).connect_ok()
    pole_b = fleet.client(fleet.node("pole-b")).connect_ok()
    clients += [operator, pole_b]
    operator.subscribe("vigil/#")
    pole_b.subscribe("vigil/pole-b/cmd/#")
    intruder = fleet.client(fleet.node("pole-a"), v5=True).connect_ok()
    clients.append(intruder)
    forged_event = intruder.publish("vigil/pole-b/events", b"forged event")
    forged_cmd = intruder.publish("vigil/pole-b/cmd/reboot", b"forged command")
    marker = intruder.publish("vigil/pole-a/events", b"marker-a")
    # MQTT 5 tells the intruder: PUBACK "Not authorized" (with 3.1.1 the broker drops it silently).
    assert str(intruder.pubacks[forged_event.mid]) == "Not authorized"
    assert str(intruder.pubacks[forged_cmd.mid]) == "Not authorized"
    assert str(intruder.pubacks[marker.mid]) == "Success"
    assert operator.receive_until(b"marker-a") == [("vigil/pole-a/events", b"marker-a")]
    # The operator's command to pole-b is queued after anything the intruder's publish would have queued.
    operator.publish("vigil/pole-b/cmd/ping", b"marker-b")
    assert pole_b.receive_until(b"marker-b") == [("vigil/pole-b/cmd/ping", b"marker-b")]


def test_node_receives_only_its_own_commands(fleet: Fleet, clients):
    operator = fleet.client(fleet.operator()).connect_ok()
    node = fleet.client(fleet.node("pole-a")).connect_ok()
    clients += [operator, node]
    subacks = [
        node.subscribe("vigil/pole-b/cmd/#"),
        node.subscribe("vigil/#"),
        node.subscribe("vigil/pole-a/cmd/#"),
    ]
    # Mosquitto 2.0 may grant the SUBACK and filter on delivery instead; either way nothing foreign arrives.
    assert all(len(codes) == 1 for codes in subacks)
    operator.publish("vigil/pole-b/cmd/reboot", b"for pole-b")
    operator.publish("vigil/pole-b/events", b"pole-b event")
    operator.publish("vigil/pole-a/cmd/ping", b"for pole-a")
    assert {payload for _, payload in node.receive_until(b"for pole-a")} == {b"for pole-a"}


def test_a_node_cannot_take_over_another_nodes_session(fleet: Fleet, clients):
    operator = fleet.client(fleet.operator()).connect_ok()
    pole_b = fleet.client(fleet.node("pole-b")).connect_ok()
    clients += [operator, pole_b]
    pole_b.subscribe("vigil/pole-b/cmd/#")
    impostor = fleet.client(
        fleet.node("pole-a"), client_id="pole-b"
    ).connect_ok()  # client id is forced to pole-a
    clients.append(impostor)
    operator.publish("vigil/pole-b/cmd/ping", b"still there")
    pole_b.receive_until(b"still there")
    assert not pole_b.closed.is_set()


def test_clients_without_a_fleet_certificate_are_refused(fleet: Fleet, clients, tmp_path: Path):
    anonymous = fleet.client(None).start()
    clients.append(anonymous)
    assert anonymous.outcome() == "refused"
    stranger_fleet = tmp_path / "other"
    assert provision(["--fleet", str(stranger_fleet), "init-ca", "--broker", "mqtts://localhost:1"]) == 0
    assert provision(["--fleet", str(stranger_fleet), "add-node", "pole-a"]) == 0
    stranger = fleet.client(
        Identity(stranger_fleet / "nodes/pole-a/node.crt", stranger_fleet / "nodes/pole-a/node.key")
    ).start()
    clients.append(stranger)
    assert stranger.outcome() == "refused"


def test_a_revoked_node_is_refused_after_the_broker_restarts(tmp_path: Path, clients):
    fleet = make_fleet(tmp_path / "fleet")
    broker = fleet.broker().start()
    try:
        before = fleet.client(fleet.node("pole-c")).connect_ok()
        before.close()
        fleet.provision("revoke", "pole-c")
        broker.stop()
        broker.start()
        revoked = fleet.client(fleet.node("pole-c")).start()
        clients.append(revoked)
        assert revoked.outcome() == "refused"
        clients.append(fleet.client(fleet.node("pole-a")).connect_ok())  # everyone else still gets in
    finally:
        broker.stop()


def test_agent_with_a_node_bundle_delivers_events_over_mutual_tls(fleet: Fleet, clients, tmp_path: Path):
    operator = fleet.client(fleet.operator()).connect_ok()
    clients.append(operator)
    operator.subscribe("vigil/pole-a/#")
    bundle = fleet.root / "nodes" / "pole-a"
    # The bundle's config names the files as installed on the node (/etc/vigil/…); point at the bundle.
    env = agent_env(
        VIGIL_UPLINK__TLS__CA_FILE=str(bundle / "ca.crt"),
        VIGIL_UPLINK__TLS__CERT_FILE=str(bundle / "node.crt"),
        VIGIL_UPLINK__TLS__KEY_FILE=str(bundle / "node.key"),
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--config",
            str(bundle / "config.toml"),
            "--source",
            "synthetic:3",
            "--no-realtime",
            "--max-frames",
            "300",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # The agent says goodbye (retained "offline" status, or its will) after everything it published
    # on that connection, so once it arrives every delivered event has arrived too.
    events = []
    while True:
        topic, payload, retained = operator.messages.get(timeout=WAIT)
        if topic == "vigil/pole-a/events":
            events.append(json.loads(payload))
        elif topic == "vigil/pole-a/status" and not retained and json.loads(payload)["state"] == "offline":
            break
    assert events, f"no events arrived; agent log:\n{res.stderr[-3000:]}"
    assert {e.get("node") for e in events} <= {"pole-a", None}  # vigil.event/1.1: the topic names the node
    seqs = sorted(e["seq"] for e in events)
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert all(e["location"]["mode"] == "static" and e["location"]["lat"] == 52.37 for e in events)


def test_checklist_broker_check_passes_with_the_node_bundle(fleet: Fleet, tmp_path: Path):
    bundle = fleet.root / "nodes" / "pole-a"

    def broker_check(config_dir: Path) -> subprocess.CompletedProcess:
        argv = ["--config-dir", str(config_dir), "--only", "broker", "--broker", f"mqtts://localhost:{fleet.port}"]
        checklist = [sys.executable, str(ROOT / "hw_tests" / "checklist"), *argv]
        return subprocess.run(checklist, capture_output=True, text=True, timeout=60, cwd=ROOT)

    res = broker_check(bundle)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASS broker" in res.stdout
    revoked_copy = tmp_path / "foreign"
    shutil.copytree(bundle, revoked_copy)
    other = tmp_path / "other-fleet"
    assert provision(["--fleet", str(other), "init-ca", "--broker", "mqtts://localhost:1"]) == 0
    assert provision(["--fleet", str(other), "add-node", "pole-a"]) == 0
    for name in ("node.crt", "node.key"):
        shutil.copy(other / "nodes/pole-a" / name, revoked_copy / name)
    res = broker_check(revoked_copy)
    assert res.returncode == 1 and "FAIL broker" in res.stdout, res.stdout + res.stderr
