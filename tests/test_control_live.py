"""Commands that change what the node does, shown on the running pipeline: a class removed by
`config/set` stops its events at once (and comes back when re-added), and `modem/reset` reboots the
(emulated) modem, which the supervisor brings back online."""

from __future__ import annotations

import json

import pytest

from tests.agent_harness import AgentHarness, Operator


def appeared(records: list[dict], *, after_seq: int = 0) -> list[dict]:
    return [r for r in records if r.get("type") == "object_appeared" and r.get("seq", 0) > after_seq]


def test_removing_a_class_stops_its_events_live(broker, tmp_path):
    # as fast as the CPU allows: hundreds of synthetic frames per second, people and cars in each minute
    with AgentHarness(tmp_path / "state", broker=broker.url, config={"capture": {"realtime": False}}) as node:
        operator = Operator(broker.url)
        try:
            assert node.wait_records(lambda rs: sum(r["label"] == "person" for r in appeared(rs)) >= 2, 60)
            reply = operator.request("config/set", {"values": {"detect.classes": ["car", "truck"]}})
            assert reply["status"] == "ok", reply
            assert node.running.spool.flush(10)
            cut = node.running.spool.seq("events")  # every later event was detected under the new classes
            frames = node.running.pipeline.stats.frames
            assert node.wait_records(
                lambda rs: len(appeared(rs, after_seq=cut)) >= 4 and node.running.pipeline.stats.frames > frames + 600,
                90,
            )
            later = appeared(node.records, after_seq=cut)
            assert {r["label"] for r in later} <= {"car", "truck"}, [r["label"] for r in later]

            back = operator.request("config/set", {"values": {"detect.classes": ["person", "car", "truck"]}})
            assert back["status"] == "ok"
            assert node.running.spool.flush(10)
            cut = node.running.spool.seq("events")
            assert node.wait_records(lambda rs: any(r["label"] == "person" for r in appeared(rs, after_seq=cut)), 90)
        finally:
            operator.close()


def test_modem_reset_reboots_the_modem_and_it_comes_back(broker, tmp_path):
    config = {"modem": {"mode": "managed"}, "gnss": {"source": "auto"}}
    with AgentHarness(tmp_path / "state", broker=broker.url, config=config) as node:
        operator = Operator(broker.url)
        try:
            supervisor = node.stage("modem").supervisor
            assert supervisor.wait_for(lambda s: s["up"], 30) is not None, supervisor.status()
            opens = supervisor.status()["counters"]["opens"]
            reply = operator.request("modem/reset", actor="noc")
            assert reply["status"] == "ok", reply
            # the reboot drops the port; the supervisor reopens it and registers again
            assert supervisor.wait_for(lambda s: s["counters"]["opens"] > opens and s["up"], 30) is not None
            audit = [e for e in node.stage("health").privacy.audit.entries() if e["action"] == "modem.reset"]
            assert audit and "noc" in audit[-1]["actor"]
            status = operator.request("status")["data"]["stages"]["modem"]
            assert status["link"]["up"] is True and status["emulated"] is True
        finally:
            operator.close()


def replied(operator: Operator, request_id: str) -> list[dict]:
    return [r for r in operator.replies() if r.get("id") == request_id]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_a_command_sent_while_the_node_is_away_is_answered_when_it_returns(broker, tmp_path, protocol):
    state = tmp_path / "state"
    config = {"uplink": {"protocol": protocol}}
    operator = Operator(broker.url)
    try:
        with AgentHarness(state, broker=broker.url, config=config):
            assert operator.wait_listening()
        # the node is away (a brownout, a reboot); the operator asks anyway, QoS 1
        operator.publish("ping", json.dumps({"id": "sent-while-away"}).encode())
        with AgentHarness(state, broker=broker.url, config=config):
            assert operator.sub.wait_for(lambda _ms: bool(replied(operator, "sent-while-away")), 30)
        assert replied(operator, "sent-while-away")[-1]["status"] == "ok"
    finally:
        operator.close()


def test_with_a_clean_session_commands_sent_while_away_are_lost(broker, tmp_path):
    state = tmp_path / "state"
    config = {"uplink": {"session_expiry_s": 0}}
    operator = Operator(broker.url)
    try:
        with AgentHarness(state, broker=broker.url, config=config):
            assert operator.wait_listening()
        operator.publish("ping", json.dumps({"id": "sent-while-away"}).encode())
        seen = len(operator.statuses())
        with AgentHarness(state, broker=broker.url, config=config):
            assert operator.wait_listening(after=seen)
            # a broker delivers a session's queued messages before new ones: once this one is
            # answered, the earlier one would have been too
            assert operator.request("ping", id="sent-after-return")["status"] == "ok"
        assert replied(operator, "sent-while-away") == []
    finally:
        operator.close()
