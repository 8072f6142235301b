"""Live configuration reaches every object that keeps its own copy of a setting, through that object's
`reconfigure`, while the agent's config is replaced whole and never edited (agent.control.live).

A real agent (synthetic scene, real detector, tamper on), a real Mosquitto, an operator client."""

from __future__ import annotations

import pydantic
import pytest

from tests.agent_harness import AgentHarness, Operator

NEW = {
    "events.thumbnails": False,
    "telemetry.interval_s": 7.0,
    "uplink.max_bytes_per_s": 12345,
    "tamper.cover_ratio": 0.42,
    "motion.min_area": 0.02,
    "detect.nms_iou": 0.3,
}


@pytest.fixture(scope="module")
def node(module_broker, tmp_path_factory):
    state = tmp_path_factory.mktemp("node") / "state"
    with AgentHarness(state, broker=module_broker.url, trusted_clock=True, config={"tamper": {"enabled": True}}) as h:
        yield h


@pytest.fixture(scope="module")
def operator(module_broker, node):
    op = Operator(module_broker.url)
    yield op
    op.close()


def test_every_tunable_setting_has_an_owner_or_is_read_at_each_use(node):
    from agent.control.live import READ_AT_USE, under
    from agent.control.tunable import TUNABLE

    owners = [o.prefix for o in node.stage("control").live.owners]
    orphans = [key for key in TUNABLE if not any(under(key, p) for p in [*owners, *READ_AT_USE])]
    assert not orphans, f"tunable but nobody is told when they change: {orphans}"


def owners_see(node: AgentHarness) -> dict:
    """What each owner of a copied setting holds now (not what the config says)."""
    running = node.running
    return {
        "events.thumbnails": running.pipeline.events_cfg.thumbnails,
        "telemetry.interval_s": node.stage("health").status()["telemetry"]["interval_s"],
        "uplink.max_bytes_per_s": running.services.publisher.settings.max_bytes_per_s,
        "tamper.cover_ratio": node.stage("tamper").detector.cfg.cover_ratio,
        "motion.min_area": running.pipeline.gate.cfg.min_area,
        "detect.nms_iou": running.pipeline.detector.nms_iou,
    }


def test_every_owner_takes_the_new_settings_and_the_old_config_is_untouched(operator, node):
    before = node.agent.config
    dumped = before.model_dump(mode="json")
    assert all(value != NEW[key] for key, value in owners_see(node).items())  # a change to see
    reply = operator.request("config/set", {"values": NEW})
    assert reply["status"] == "ok", reply
    assert set(reply["data"]["changed"]) == set(NEW)
    assert owners_see(node) == NEW
    after = node.agent.config
    assert after is not before  # replaced whole ...
    assert before.model_dump(mode="json") == dumped  # ... the old one never edited
    with pytest.raises(pydantic.ValidationError):
        after.telemetry.interval_s = 1.0  # and nobody edits the new one either


def test_a_refused_persist_rolls_every_owner_back(operator, node):
    overlay = node.running.state_dir / "config-overlay.toml"
    saved = overlay.read_bytes() if overlay.exists() else None
    overlay.unlink(missing_ok=True)
    overlay.mkdir()  # rename onto a directory fails: the disk refuses the change
    try:
        config, seen = node.agent.config, owners_see(node)
        changed = {"events.thumbnails": not seen["events.thumbnails"],
                   "telemetry.interval_s": seen["telemetry.interval_s"] + 3,
                   "uplink.max_bytes_per_s": seen["uplink.max_bytes_per_s"] + 1000,
                   "tamper.cover_ratio": seen["tamper.cover_ratio"] / 2,
                   "motion.min_area": seen["motion.min_area"] / 2,
                   "detect.nms_iou": seen["detect.nms_iou"] + 0.1}
        reply = operator.request("config/set", {"values": changed})
        assert reply["status"] == "error" and "rolled back" in reply["message"], reply
        assert node.agent.config is config
        assert owners_see(node) == seen
    finally:
        overlay.rmdir()
        if saved is not None:
            overlay.write_bytes(saved)
