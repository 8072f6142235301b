"""Signed commands and operator roles end to end (issue 13, item 9), on real parts: a fleet made by
`vigil-provision` (operators with roles), Mosquitto running the generated configuration and ACL
(mutual TLS), a real agent process installed from its node bundle (production profile), the real
`vigil-fleet cmd`, and `vigil-fleet ingest` keeping the node's audit heads (item 7).

The broker enforces the roles (a viewer cannot even publish `restart`), and so does the node: a
viewer's signature delivered by a connection that may publish anything is still refused, as are
unsigned, altered, replayed and revoked requests. The audit log names the verified operator."""

from __future__ import annotations

import json
import os
import queue
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")
pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from fleet.commands.cmd import Signer
from provisioning.cli import main as provision
from tests.brokers import free_port, mosquitto_binary, wait_port
from tests.conftest import ROOT
from tests.fleet_support import agent_env, fleet_cli, kill9, start_ingest, wait_for

NODE = "pole-a"
OPERATORS = {"alice": "admin", "carol": "operator", "bob": "viewer", "dave": "admin", "ingest": "viewer"}


class Rig:
    def __init__(self, root: Path) -> None:
        mosquitto_binary()
        self.root = root
        self.fleet = root / "fleet"
        self.port = free_port()
        self.url = f"mqtts://localhost:{self.port}"
        self.state = root / "state"
        self.db = f"sqlite:///{root / 'fleet.db'}"
        self.provision("init-ca", "--broker", self.url, "--name", "signed-city")
        self.provision("add-node", NODE, "--lat", "52.37", "--lon", "4.89")
        for name, role in OPERATORS.items():
            self.provision("add-operator", name, "--role", role)
        (root / "mosquitto-data").mkdir()
        user = ["--user", "root"] if os.geteuid() == 0 else []
        self.provision("broker-config", "--port", str(self.port), "--bind", "127.0.0.1", "--host", "localhost",
                       "--persistence-dir", str(root / "mosquitto-data"), *user)
        self.broker: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.ingest: subprocess.Popen[bytes] | None = None

    def provision(self, *args: str) -> None:
        assert provision(["--fleet", str(self.fleet), *args]) == 0, args

    def start_broker(self) -> None:
        with (self.root / "mosquitto.log").open("ab") as log:
            self.broker = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.fleet / "broker" / "mosquitto.conf")], stdout=log, stderr=log
            )
        wait_port(self.port, proc=self.broker)

    def start_agent(self) -> None:
        bundle = self.fleet / "nodes" / NODE
        env = agent_env(  # the bundle names the files as installed on the Pi (/etc/vigil/…)
            VIGIL_UPLINK__TLS__CA_FILE=str(bundle / "ca.crt"),
            VIGIL_UPLINK__TLS__CERT_FILE=str(bundle / "node.crt"),
            VIGIL_UPLINK__TLS__KEY_FILE=str(bundle / "node.key"),
            VIGIL_PRIVACY__AUDIT__KEY_FILE=str(bundle / "audit.key"),
            VIGIL_UPLINK__RECONNECT_MAX_S="2",
            VIGIL_TELEMETRY__INTERVAL_S="5",
        )
        argv = [sys.executable, "-m", "agent", "--config", str(bundle / "config.toml"), "--source", "synthetic:3",
                "--state-dir", str(self.state), "--http", "off"]
        with (self.root / "agent.log").open("ab") as log:
            self.agent = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT, env=env,
                                          preexec_fn=lambda: os.nice(5))

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(30)

    def cmd(self, operator: str | None, command: str, args: dict[str, Any] | None = None,
            timeout: str = "30s") -> subprocess.CompletedProcess[str]:
        who = ["--fleet", str(self.fleet), "--operator", operator] if operator else ["--broker", self.url]
        extra = ["--args", json.dumps(args)] if args is not None else []
        return fleet_cli("cmd", NODE, command, *who, *extra, "--json", "--timeout", timeout, timeout=120)

    def tls(self, operator: str) -> ssl.SSLContext:
        folder = self.fleet / "operators" / operator
        context = ssl.create_default_context(cafile=str(self.fleet / "ca" / "ca.crt"))
        context.load_cert_chain(str(folder / f"{operator}.crt"), str(folder / f"{operator}.key"))
        return context

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        for proc in (self.ingest, self.agent, self.broker):
            if proc is not None:
                kill9(proc)


class Wire:
    """A raw MQTT 3.1.1 connection as one operator: publish any payload, collect the node's replies."""

    def __init__(self, rig: Rig, operator: str) -> None:
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=operator)
        self.client.tls_set_context(rig.tls(operator))
        self.client.on_message = lambda c, u, m: self.replies.put(json.loads(m.payload))
        subscribed = queue.Queue[bool]()
        self.client.on_subscribe = lambda c, u, mid, codes, p: subscribed.put(True)
        self.client.connect("localhost", rig.port)
        self.client.loop_start()
        self.client.subscribe(f"vigil/{NODE}/cmd_result", qos=1)
        subscribed.get(timeout=15)

    def request(self, command: str, payload: bytes, request_id: str, timeout: float = 30) -> dict[str, Any]:
        info = self.client.publish(f"vigil/{NODE}/cmd/{command}", payload, qos=1)
        info.wait_for_publish(15)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reply = self.replies.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if reply.get("id") == request_id:
                return reply
        raise AssertionError(f"no reply to {command} {request_id}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_listening(rig: Rig, timeout: float = 90) -> None:
    """Until the node's retained status says it takes commands (a request sent before its first
    subscription would find nobody to deliver it to)."""
    statuses: queue.Queue[dict[str, Any]] = queue.Queue()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="alice")
    client.tls_set_context(rig.tls("alice"))
    client.on_message = lambda c, u, m: statuses.put(json.loads(m.payload))
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"vigil/{NODE}/status", qos=1)
    client.connect("localhost", rig.port)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            status = statuses.get(timeout=max(0.1, deadline - time.monotonic()))
            if status.get("state") == "online" and "cmd/#" in status.get("listening", []):
                return
    except queue.Empty:
        raise AssertionError("the node never said it listens for commands:\n"
                             + (rig.root / "agent.log").read_text()[-3000:]) from None
    finally:
        client.disconnect()
        client.loop_stop()


def signed(rig: Rig, operator: str, command: str, args: dict[str, Any], **kw: Any) -> tuple[str, bytes]:
    request_id = f"{operator}-{uuid.uuid4().hex[:12]}"
    return request_id, Signer(rig.fleet, operator).sign(NODE, command, request_id, args, kw.get("actor"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Iterator[Rig]:
    r = Rig(tmp_path_factory.mktemp("signed"))
    try:
        r.start_broker()
        r.ingest = start_ingest("--fleet", str(r.fleet), "--operator", "ingest", "--db", r.db,
                                log=r.root / "ingest.log")
        r.start_agent()
        wait_listening(r)
        yield r
    finally:
        r.close()


def test_each_role_runs_what_it_may_and_the_audit_log_names_the_verified_operator(rig):
    ping = rig.cmd("bob", "ping")
    assert ping.returncode == 0 and json.loads(ping.stdout)["status"] == "ok"
    change = rig.cmd("carol", "config/set", {"values": {"detect.score_threshold": 0.45}})
    assert change.returncode == 0, change.stdout + change.stderr
    entry = [e for e in rig.audit() if e["action"] == "config.change"][-1]
    assert "by carol (operator, certificate" in entry["actor"], entry["actor"]


def test_the_broker_refuses_what_a_role_may_not_send(rig):
    res = rig.cmd("bob", "restart", {"reason": "viewer tries"})
    assert res.returncode == 1 and "broker refused" in res.stdout, res.stdout + res.stderr
    assert rig.agent is not None and rig.agent.poll() is None


def test_the_node_refuses_it_too_whoever_delivers_it(rig):
    wire = Wire(rig, "alice")  # an admin's connection: the broker lets it publish any command
    try:
        request_id, payload = signed(rig, "bob", "restart", {"reason": "smuggled"})
        reply = wire.request("restart", payload, request_id)
        assert reply["status"] == "error" and "needs the admin role; bob has viewer" in reply["message"]

        unsigned = json.dumps({"id": "plain-1", "args": {"reason": "no signature"}}).encode()
        reply = wire.request("restart", unsigned, "plain-1")
        assert reply["status"] == "error" and "unsigned commands are refused" in reply["message"]

        request_id, payload = signed(rig, "carol", "config/set", {"values": {"detect.score_threshold": 0.5}})
        forged = json.loads(payload)
        forged["args"]["values"]["detect.score_threshold"] = 0.05  # altered on the way
        reply = wire.request("config/set", json.dumps(forged).encode(), request_id)
        assert reply["status"] == "error" and "signature does not match" in reply["message"]

        reply = wire.request("config/set", payload, request_id)  # the genuine one
        assert reply["status"] == "ok", reply
        again = wire.request("config/set", payload, request_id)  # replayed as is
        assert again["status"] == "error" and "duplicate" in again["message"]

        request_id, payload = signed(rig, "carol", "config/get", {})
        other_node = json.loads(payload)  # signed for pole-a: useless anywhere else, and vice versa
        wire.client.publish("vigil/pole-b/cmd/config/get", json.dumps(other_node).encode(), qos=1)
    finally:
        wire.close()
    assert rig.agent is not None and rig.agent.poll() is None  # still running: no restart happened
    assert not any(e["action"] == "agent.restart" for e in rig.audit())


def test_a_revoked_operator_is_refused_by_the_node_before_the_broker_restarts(rig):
    wire = Wire(rig, "dave")  # connected before the revocation; Mosquitto reads its CRL only at start
    try:
        rig.provision("revoke", "dave")
        # dave's own request carries the fleet's new CRL (vigil-fleet cmd attaches it): it revokes dave
        request_id, payload = signed(rig, "dave", "status", {})
        reply = wire.request("status", payload, request_id)
        assert reply["status"] == "error" and "revoked" in reply["message"], reply
    finally:
        wire.close()
    assert rig.cmd("alice", "ping").returncode == 0  # everyone else still gets through


def test_the_back_office_alarms_when_a_nodes_audit_log_is_cut_short(rig):
    def node_row() -> dict[str, Any]:
        rows = json.loads(fleet_cli("status", "--db", rig.db, "--json").stdout)["nodes"]
        return next(r for r in rows if r["node"] == NODE)

    seq = max(e["seq"] for e in rig.audit())
    wait_for(lambda: (node_row()["audit_seq"] or 0) >= seq, 60, "the audit head in the back office")
    rig.stop_agent()
    log = rig.state / "audit" / "audit.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n")  # someone with the SD card cuts the log short
    rig.start_agent()
    row = wait_for(lambda: (r := node_row())["audit_alarm"] and r, 90, "an audit alarm")
    # the restarted node writes entries of its own (agent.start): its log grew back past the cut, so
    # what shows is that the entry whose head was published is not the same any more (a fork)
    assert row["audit_alarm"] in ("audit_rewind", "audit_fork") and row["alarms"] >= 1
    status = fleet_cli("status", "--db", rig.db)
    assert "REWOUND!" in status.stdout or "FORKED!" in status.stdout, status.stdout
    heads = fleet_cli("audit", NODE, "--db", rig.db)
    assert heads.returncode == 1 and "ALARM audit_" in heads.stdout
