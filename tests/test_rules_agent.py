"""Rules in the whole agent: the stage wiring connects engine and dispatcher to the pipeline, the local
outputs and the control plane, which serves a rule's snapshot request. Real agent (synthetic scene,
shipped detector, spool, publisher) and a real Mosquitto."""

from __future__ import annotations

from tests.agent_harness import AgentHarness, Operator

RULES = {
    "warmup_s": 0,
    "zones": [{"name": "street", "polygon": [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]}],
    "outputs": [{"name": "lamp", "kind": "log"}],
    "rules": [
        {
            "name": "arrivals",
            "type": "zone_enter",
            "zone": "street",
            "cooldown_s": 3600,  # one firing: one event, one pulse, one snapshot
            "snapshot": True,
            "output": "lamp",
            "output_s": 0.5,
        }
    ],
}


def test_a_rule_firing_in_the_agent_sends_its_event_pulses_its_output_and_gets_its_snapshot(
    broker, tmp_path, event_validator
):
    operator = Operator(broker.url)
    try:
        with AgentHarness(tmp_path / "state", broker=broker.url, config={"rules": RULES}, trusted_clock=True) as node:
            assert operator.sub.wait_for(
                lambda _ms: any(e["type"] == "snapshot" for e in operator.events()), 60.0
            ), f"no snapshot at the broker; rules: {node.stage('rules').status()}"
            status = node.stage("rules").status()["rules"]
            audit = list(node.stage("health").privacy.audit.entries())
    finally:
        operator.close()
    events = operator.events()
    (fired,) = [e for e in events if e.get("rule") == "arrivals"]
    assert fired["type"] == "zone_enter" and fired["zone"] == "street" and fired["thumb"]["bytes"] > 0
    event_validator.validate(fired)
    (snapshot,) = [e for e in events if e["type"] == "snapshot"]
    assert snapshot["snapshot"]["actor"] == "rule:arrivals" and snapshot["thumb"]["bytes"] > 0
    assert status["rules"]["arrivals"]["fired"] == 1 and status["events"] == 1 and status["errors"] == 0
    assert status["snapshot_requests"] == 1 and status["pulses"] == 1 and status["outputs"] == ["lamp"]
    by_rule = [(e["action"], e["details"].get("handled")) for e in audit if e["actor"] == "rule:arrivals"]
    assert by_rule == [("snapshot.request", True), ("snapshot.sent", None)]
