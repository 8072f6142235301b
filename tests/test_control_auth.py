"""The command gate in a real agent (issue 13, items 9 and 10): freshness on the trusted clock (GNSS
time when the system clock is wrong), replays refused for the whole freshness window and across
restarts, a rate per operator, roles from certificates issued by `vigil-provision`, the live-change
overlay limited to live-tunable keys, and GPIO outputs only from the node's own allow-list.

Requests go through `ControlStage.handle` (what the control thread runs for every MQTT request) and
replies are read back from the spool; the MQTT path itself is covered in test_control.py and, with a
generated broker ACL, in test_signed_commands.py."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography", reason="signed commands need cryptography")

from agent.clock import Clock, rfc3339
from agent.control.persist import OVERLAY_NAME, load_with_overlay
from agent.control.stage import Job
from fleet.commands.cmd import Signer
from provisioning.cli import main as provision
from tests.agent_harness import NODE, AgentHarness


def reply_to(harness: AgentHarness, command: str, body: dict[str, Any] | bytes) -> dict[str, Any]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    request_id = json.loads(payload).get("id")
    before = len(harness.records)
    harness.stage("control").handle(Job(command, payload))
    assert harness.wait_records(
        lambda rs: any(r["stream"] == "cmd_result" and r.get("id") == request_id for r in rs[before:]), 10
    )
    return [r for r in harness.records[before:] if r["stream"] == "cmd_result" and r.get("id") == request_id][-1]


def ping(request_id: str | None = None, **envelope: Any) -> dict[str, Any]:
    return {"id": request_id or uuid.uuid4().hex[:16], **envelope}


# -- item 10: freshness on the trusted clock, replays ------------------------------------------------


def test_freshness_is_judged_on_gnss_time_not_on_a_wrong_system_clock(tmp_path):
    """No NTP; the GNSS receiver says it is two hours later than the system clock believes."""
    clock = Clock(ntp_probe=lambda: False)
    skew = 7200.0
    clock.note_gnss_time(time.time() + skew)
    with AgentHarness(tmp_path / "state", clock=clock) as node:
        assert node.running.clock.state().source == "gnss"
        fresh = reply_to(node, "ping", ping(ts=rfc3339(time.time() + skew - 5)))  # made just now, by GNSS time
        assert fresh["status"] == "ok", fresh
        old = reply_to(node, "ping", ping(ts=rfc3339(time.time() - 5)))  # two hours old, by GNSS time
        assert old["status"] == "error" and "stale" in old["message"], old


def test_a_replayed_id_is_refused_for_the_whole_window_and_across_restarts(tmp_path):
    state = tmp_path / "state"
    with AgentHarness(state) as node:
        assert reply_to(node, "ping", ping("the-first"))["status"] == "ok"
        for i in range(600):  # more than the 512 ids the node used to remember
            node.stage("control").handle(Job("ping", json.dumps(ping(f"filler-{i}")).encode()))
        again = reply_to(node, "ping", ping("the-first"))
        assert again["status"] == "error" and "duplicate" in again["message"]
        assert node.running.spool.flush(10)
    with AgentHarness(state) as node:  # a restart forgets nothing that is still within the window
        again = reply_to(node, "ping", ping("the-first"))
        assert again["status"] == "error" and "duplicate" in again["message"]
        assert not (state / "control" / "request-ids.json").exists()  # no file of its own: the spool keeps it


# -- item 9: signed requests in a node that refuses unsigned ones -------------------------------------------


def test_a_production_node_obeys_no_unsigned_request(tmp_path):
    """What a provisioned node does by default: whatever an unsigned request claims, nothing changes."""
    with AgentHarness(tmp_path / "state", config={"node": {"profile": "production"}}) as node:
        before = node.agent.config.detect.score_threshold
        body = ping(actor="alice", args={"values": {"detect.score_threshold": 0.9}})
        reply = reply_to(node, "config/set", body)
        assert reply["status"] == "error" and "unsigned commands are refused" in reply["message"], reply
        assert node.agent.config.detect.score_threshold == before
        assert not any(e["action"] == "config.change" and "alice" in e["actor"]
                       for e in node.stage("health").privacy.audit.entries())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fleet")

    def run(*args: str) -> None:
        assert provision(["--fleet", str(root), *args]) == 0, args

    run("init-ca", "--broker", "mqtts://localhost:8883", "--name", "gate")
    run("add-node", NODE)
    for name, role in (("alice", "admin"), ("carol", "operator"), ("bob", "viewer")):
        run("add-operator", name, "--role", role)
    other = tmp_path_factory.mktemp("other-fleet")
    assert provision(["--fleet", str(other), "init-ca", "--broker", "mqtts://localhost:8883"]) == 0
    assert provision(["--fleet", str(other), "add-operator", "alice", "--role", "admin"]) == 0
    (root / "other").symlink_to(other)
    return root


@pytest.fixture(scope="module")
def node(fleet, tmp_path_factory):
    config = {
        "control": {"ca_file": str(fleet / "ca" / "ca.crt"), "unsigned_role": "none", "rate_per_min": 1,
                    "rate_burst": 3},
    }
    with AgentHarness(tmp_path_factory.mktemp("gate") / "state", config=config) as harness:
        yield harness


def signed(fleet: Path, operator: str, command: str, args: dict[str, Any], node: str = NODE) -> bytes:
    return Signer(fleet, operator).sign(node, command, f"{operator}-{uuid.uuid4().hex[:12]}", args, None)


def test_unsigned_requests_are_refused_when_the_node_says_so(node):
    reply = reply_to(node, "ping", ping())
    assert reply["status"] == "error" and "unsigned commands are refused" in reply["message"]


def test_only_operator_certificates_of_this_fleet_sign(node, fleet):
    foreign = json.loads(signed(fleet / "other", "alice", "ping", {}))
    crl = reply_to(node, "ping", foreign)  # it carries its own fleet's CRL, which this node will not take
    assert crl["status"] == "error" and "not signed by the fleet CA" in crl["message"]
    del foreign["auth"]["crl"]  # (the CRL is not part of what is signed)
    reply = reply_to(node, "ping", foreign)
    assert reply["status"] == "error" and "not issued by this node's fleet CA" in reply["message"], reply
    elsewhere = reply_to(node, "ping", signed(fleet, "carol", "ping", {}, node="pole-b"))
    assert elsewhere["status"] == "error" and "signature does not match" in elsewhere["message"]


def test_each_operator_has_its_own_rate(node, fleet):
    for _ in range(3):  # rate_burst
        assert reply_to(node, "ping", signed(fleet, "bob", "ping", {}))["status"] == "ok"
    flood = reply_to(node, "ping", signed(fleet, "bob", "ping", {}))
    assert flood["status"] == "error" and "rate limit: bob" in flood["message"]
    assert reply_to(node, "ping", signed(fleet, "carol", "ping", {}))["status"] == "ok"  # carol is not bob


def test_roles_and_the_verified_name_in_the_audit_log(node, fleet):
    mask = {"name": "door", "polygon": [[0.0, 0.0], [0.2, 0.0], [0.2, 0.2]]}
    denied = reply_to(node, "config/set", signed(fleet, "bob", "config/set", {"values": {"privacy.masks": [mask]}}))
    assert denied["status"] == "error" and "needs the operator role; bob has viewer" in denied["message"]
    done = reply_to(node, "config/set", signed(fleet, "carol", "config/set", {"values": {"privacy.masks": [mask]}}))
    assert done["status"] == "ok", done
    entry = [e for e in node.stage("health").privacy.audit.entries() if e["action"] == "masks.update"][-1]
    assert "by carol (operator, certificate " in entry["actor"]
    assert node.stage("control").status()["auth"]["refused"]["role"] >= 1


# -- item 10: the overlay and GPIO outputs -------------------------------------------------------------------


def test_the_overlay_cannot_change_what_only_the_config_file_may(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nid = "{NODE}"\nstate_dir = "{state}"\n[control]\nunsigned_role = "none"\n')
    (state / OVERLAY_NAME).write_text(
        "[set]\n"
        '"detect.score_threshold" = 0.6\n'  # live-tunable: kept
        '"control.unsigned_role" = "admin"\n'  # what someone who can write the state directory would like
        '"privacy.faces.redact" = false\n'
        '"uplink.broker" = "mqtt://attacker.example:1883"\n'
    )
    loaded = load_with_overlay(config)
    assert loaded.config.detect.score_threshold == 0.6
    assert loaded.config.control.unsigned_role == "none"
    assert loaded.config.privacy.faces.redact is True
    assert loaded.config.uplink.broker == ""


GPIO = {"name": "relay", "kind": "gpio", "pin": 4}


def test_remote_changes_drive_only_gpio_pins_the_node_allows(tmp_path):
    with AgentHarness(tmp_path / "state", config={"control": {"remote_gpio_pins": [17]}}) as node:
        refused = reply_to(node, "config/set", ping(args={"values": {"rules.outputs": [GPIO]}}))
        assert refused["status"] == "error" and "GPIO 4 is not in control.remote_gpio_pins" in refused["message"]
        assert node.agent.config.rules.outputs == []
        allowed = reply_to(node, "config/set", ping(args={"values": {"rules.outputs": [{**GPIO, "pin": 17}]}}))
        assert allowed["status"] == "ok", allowed
    overlay = tmp_path / "state" / OVERLAY_NAME
    overlay.write_text(overlay.read_text().replace("pin = 17", "pin = 4"))  # edited on the SD card
    config = tmp_path / "node.toml"
    state = tmp_path / "state"
    config.write_text(f'[node]\nid = "{NODE}"\nstate_dir = "{state}"\n[control]\nremote_gpio_pins = [17]\n')
    assert load_with_overlay(config).config.rules.outputs == []  # the overlay's outputs are not applied
