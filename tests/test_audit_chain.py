"""The audit log is tamper-evident (issue 13, item 7): a chain keyed with the node secret that nobody
without the key can rewrite, a head the back office keeps, and rotation that never drops a
privacy-relevant entry before a head covering it was published.

The log is the real one (`open_audit`, as the agent opens it) on real files; the checks run through
the real command line (`agent privacy audit --verify`); publication goes through a real agent, its
spool and a real Mosquitto."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.config.privacy import AuditConfig
from agent.privacy import open_audit
from tests.agent_harness import AgentHarness, Operator
from tests.brokers import Mosquitto, free_port
from tests.conftest import run_agent

MASK = {"name": "garden", "polygon": [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4], [0.0, 0.4]]}


def write_log(state: Path, n: int = 6, **cfg: int):
    log = open_audit(state, AuditConfig(**cfg))
    for i in range(n):
        log.record("config.change", f"mqtt:cmd/config/set id=r{i} by alice", {"keys": ["detect.score_threshold"]})
    return log


def verify(state: Path, *heads: str) -> tuple[int, str]:
    args = ["privacy", "audit", "--verify", "--state-dir", str(state)]
    for head in heads:
        args += ["--head", head]
    res = run_agent(*args, timeout=60)
    return res.returncode, res.stdout + res.stderr


def relink(lines: list[str]) -> list[str]:
    """What someone without the key can do after editing the log: renumber and re-chain every
    entry by the sha256 of the line before it (what the chain used to be)."""
    out: list[str] = []
    for i, line in enumerate(lines):
        entry = json.loads(line)
        entry["seq"] = i + 1
        if out:
            entry["prev"] = hashlib.sha256(out[-1].encode()).hexdigest()
        out.append(json.dumps(entry, separators=(",", ":"), sort_keys=True))
    return out


def strip_keys(line: str) -> str:
    entry = {k: v for k, v in json.loads(line).items() if k not in ("mac", "kid", "after_unkeyed")}
    return json.dumps(entry, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize("forgery", ["drop and re-chain", "edit and re-chain", "strip the keys and re-chain"])
def test_a_rewritten_chain_does_not_verify_without_the_key(tmp_path, forgery):
    state = tmp_path / "state"
    log = write_log(state)
    assert log.verify() == []
    lines = log.path.read_text().splitlines()
    if forgery == "drop and re-chain":
        forged = relink(lines[:2] + lines[3:])  # the mask change at seq 3 never happened
    elif forgery == "edit and re-chain":
        edited = lines[2].replace("by alice", "by bob")
        forged = relink([*lines[:2], edited, *lines[3:]])
    else:
        forged = relink([strip_keys(line) for line in lines[:2] + lines[3:]])
    log.path.write_text("\n".join(forged) + "\n")
    code, output = verify(state)
    assert code == 1, output
    assert "audit log:" in output


def test_a_truncated_log_is_caught_by_its_published_head(tmp_path):
    state = tmp_path / "state"
    log = write_log(state)
    head = log.head()
    assert head["seq"] == 6 and len(head["mac"]) == 64
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join(lines[:4]) + "\n")  # the last two entries removed
    assert log.verify() == []  # nothing in the file itself can show it
    code, output = verify(state, f"{head['seq']}:{head['mac']}")
    assert code == 1 and "rewound" in output, output


def test_cheap_entries_cannot_push_a_mask_change_out_before_it_is_published(tmp_path):
    log = open_audit(tmp_path / "state", AuditConfig(max_kb=16, keep=1))
    mask = log.record("masks.update", "mqtt:cmd/config/set id=m1 by alice", {"after": ["garden"]})
    for i in range(600):  # ~230 kB of entries: many rotations past keep = 1
        log.record("modem.reset", f"mqtt:cmd/modem/reset id=c{i} by mallory", {})
    assert any(e["action"] == "masks.update" and e["seq"] == mask["seq"] for e in log.entries())
    assert log.verify() == []
    assert log.full  # the node now refuses changes rather than let the log grow further
    log.mark_published(log.head()["seq"])  # the back office has now seen a head covering it
    for i in range(100):
        log.record("modem.reset", f"mqtt:cmd/modem/reset id=d{i} by mallory", {})
    assert not any(e["action"] == "masks.update" for e in log.entries())  # now it may go
    assert len(log.files()) <= 2 and log.verify() == [] and not log.full


def test_a_node_without_a_provisioned_key_makes_its_own_and_says_so(tmp_path, caplog):
    state = tmp_path / "state"
    with caplog.at_level("WARNING"):
        log = write_log(state, n=1)
    assert (state / "audit" / "audit.key").stat().st_mode & 0o777 == 0o600
    assert "no audit key was provisioned" in caplog.text
    assert all("mac" in e and e["kid"] == log.kid for e in log.entries())


# -- against a real agent, spool and broker ---------------------------------------------------------------


def test_telemetry_publishes_the_head_and_its_puback_releases_rotation(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        config = {"telemetry": {"interval_s": 5}}
        with AgentHarness(tmp_path / "state", broker=broker.url, config=config) as node:
            operator = Operator(broker.url)
            try:
                assert operator.request("config/set", {"values": {"privacy.masks": [MASK]}})["status"] == "ok"
                audit = node.stage("health").privacy.audit
                changed = max(e["seq"] for e in audit.entries() if e["action"] == "masks.update")
                assert operator.sub.wait_for(
                    lambda _ms: any(
                        (json.loads(m.payload).get("audit") or {}).get("seq", 0) >= changed
                        for m in operator.messages("telemetry")
                    ),
                    30,
                ), "no telemetry carried the audit head"
                assert node.wait_records(lambda _rs: audit.published_seq >= changed, 15)
                head = [json.loads(m.payload)["audit"] for m in operator.messages("telemetry")][-1]
                assert audit.verify({head["seq"]: head["mac"]}) == []
            finally:
                operator.close()
    finally:
        broker.stop()


def test_changes_wait_while_the_log_is_full_of_unpublished_entries(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        config = {"telemetry": {"enabled": False}, "privacy": {"audit": {"max_kb": 16, "keep": 1}}}
        with AgentHarness(tmp_path / "state", broker=broker.url, config=config) as node:
            operator = Operator(broker.url)
            try:
                assert operator.request("config/set", {"values": {"privacy.masks": [MASK]}})["status"] == "ok"
                audit = node.stage("health").privacy.audit
                while not audit.full:  # what a long stretch offline with busy operators leaves behind
                    audit.record("modem.reset", "mqtt:cmd/modem/reset by mallory", {})
                refused = operator.request("config/set", {"values": {"detect.score_threshold": 0.3}})
                assert refused["status"] == "error" and "audit log" in refused["message"]
                assert operator.request("ping")["status"] == "ok"  # reading still works
                assert any(e["action"] == "masks.update" for e in audit.entries())
            finally:
                operator.close()
    finally:
        broker.stop()


def test_without_a_puback_nothing_counts_as_published(tmp_path):
    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: telemetry waits in the spool
    config = {"telemetry": {"interval_s": 5}}
    with AgentHarness(tmp_path / "state", broker=dead, config=config) as node:
        audit = node.stage("health").privacy.audit
        assert node.wait_records(lambda rs: any(r["stream"] == "telemetry" and r.get("audit") for r in rs), 30)
        assert audit.published_seq == 0
