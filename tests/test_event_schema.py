"""The event record's two revisions (docs/events.md): vigil.event/1 carries every field, vigil.event/1.1
(the default) leaves out what a consumer restores exactly. Both validate against schema/event-v1.json,
vigil.event/1 stays as strict as it was, and a 1.1 record with its documented defaults put back is the
vigil.event/1 record the same agent sends with `events.schema_revision = "1"`.

`restore()` below is a consumer written from the schema and docs/events.md, not from the agent's code:
the schema's `default`s, the node from the topic, `clock.trusted` from `clock.source`, `last_seen` = `ts`.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.brokers import Collector, Mosquitto
from tests.conftest import ROOT, agent_env, read_events, run_agent

SCHEMA = json.loads((ROOT / "schema" / "event-v1.json").read_text())

# A vigil.event/1 record as the agent sent it before revision 1.1 existed (README, git history).
V1_RECORD: dict[str, Any] = {
    "schema": "vigil.event/1", "id": "01a21c4e-bdc7-768b-b162-68ae0c1f3763", "node": "sim-node", "seq": 1,
    "type": "object_appeared", "priority": "normal", "label": "person", "score": 0.86,
    "bbox": [0.33, 0.05, 0.61, 0.98], "track": 1, "ts": "2026-11-27T09:20:57.980Z",
    "first_seen": "2026-11-27T09:20:57.680Z", "last_seen": "2026-11-27T09:20:57.980Z",
    "clock": {"source": "ntp", "trusted": True, "boot": "865cd40f-4f70-405b-a6a0-f43de65c93f7", "mono": 701.0},
    "model": {"name": "yolox-nano", "sha256": "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14"},
    "thumb": {"sha256": "13d7" * 16, "bytes": 9176, "size": [277, 235]}, "location": None, "link": None,
}  # fmt: skip


def documented_expand() -> Any:
    """The `expand()` docs/events.md gives consumers, taken from the page itself."""
    page = (ROOT / "docs" / "events.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    return namespace["expand"]


def restore(record: dict[str, Any], topic: str) -> dict[str, Any]:
    """A consumer's reconstruction of the vigil.event/1 record from what arrived on `topic`."""
    if record["schema"] == "vigil.event/1":
        return record
    full = copy.deepcopy(record)
    full["schema"] = "vigil.event/1"
    for name, spec in SCHEMA["properties"].items():
        if name not in full and "default" in spec:
            full[name] = spec["default"]
    full.setdefault("node", topic.split("/")[-2])  # {prefix}/{node}/events
    full["clock"].setdefault("trusted", full["clock"]["source"] in ("ntp", "gnss"))
    if "first_seen" in full:
        full.setdefault("last_seen", full["ts"])
    return full


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def errors(validator: jsonschema.Draft202012Validator, record: dict[str, Any]) -> list[str]:
    return [e.message for e in validator.iter_errors(record)]


def test_the_schema_accepts_both_revisions_and_keeps_vigil_event_1_complete(validator):
    assert not errors(validator, V1_RECORD)  # what integrators receive today still validates
    for field in ("node", "priority", "thumb", "location"):
        incomplete = {k: v for k, v in V1_RECORD.items() if k != field}
        assert errors(validator, incomplete), f"a vigil.event/1 record without {field} must stay invalid"
    untrusted = {**V1_RECORD, "clock": {k: v for k, v in V1_RECORD["clock"].items() if k != "trusted"}}
    assert errors(validator, untrusted)
    compact = {
        k: v for k, v in V1_RECORD.items() if k not in ("node", "priority", "location", "link", "last_seen")
    }
    compact["schema"] = "vigil.event/1.1"
    compact["clock"] = {k: v for k, v in V1_RECORD["clock"].items() if k != "trusted"}
    assert not errors(validator, compact)
    assert not errors(validator, {**V1_RECORD, "schema": "vigil.event/1.1"})  # 1.1 may carry any of them
    assert errors(validator, {**compact, "schema": "vigil.event/2"})
    assert errors(validator, {k: v for k, v in compact.items() if k != "seq"})
    # the documented defaults give back the record
    assert restore(compact, "vigil/sim-node/events") == {**V1_RECORD, "schema": "vigil.event/1"}
    assert documented_expand()(compact, "vigil/sim-node/events") == {**V1_RECORD, "schema": "vigil.event/1"}


def shape(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what differs between two runs of the same input (ids and wall-clock instants:
    replaced by their offsets from `ts`, to the millisecond; the monotonic clock)."""
    out = copy.deepcopy(record)
    ts = datetime.fromisoformat(out.pop("ts"))
    for key in ("first_seen", "last_seen"):
        if key in out:
            out[key] = round((datetime.fromisoformat(out[key]) - ts).total_seconds(), 3)
    out.pop("id")
    out["clock"].pop("mono")
    out["bbox"] = [round(v, 3) for v in out.get("bbox", [])]  # 1.1 sends 3 decimals, 1 sends 4
    return out


def test_agent_records_in_both_revisions_validate_and_1_1_restores_to_1(tmp_path, validator):
    """The real agent over the same deterministic input twice: `schema_revision = "1"` to its local
    output, the default (1.1) to a real broker. Every record of both validates; every 1.1 record, restored
    from what the subscriber received (topic and payload), is the vigil.event/1 record of the other run,
    and is smaller."""
    config = tmp_path / "node.toml"
    config.write_text('[node]\nid = "pole-7"\nlocation = {lat = 52.37, lon = 4.89}\n')
    common = ["--config", str(config), "--source", "synthetic:3", "--max-frames", "300", "--no-realtime"]
    full = run_agent(
        *common, "--state-dir", str(tmp_path / "v1"), env=agent_env(VIGIL_EVENTS__SCHEMA_REVISION="1")
    )
    assert full.returncode == 0, full.stderr
    v1 = read_events(full.stdout)
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.url, ["vigil/+/events"])
    try:
        res = run_agent(*common, "--state-dir", str(tmp_path / "v11"), "--broker", broker.url)
        assert res.returncode == 0 and "spool drained" in res.stderr, res.stderr
        assert collector.wait_for(lambda ms: len({json.loads(m.payload)["seq"] for m in ms}) >= len(v1), 30)
    finally:
        collector.close()
        broker.stop()
    received = {}
    for m in collector.snapshot():
        received.setdefault(json.loads(m.payload)["seq"], m)
    assert len(v1) >= 10 and sorted(received) == [e["seq"] for e in v1]
    assert any(e["location"] for e in v1) and any(e["last_seen"] == e["ts"] for e in v1)
    compact_bytes = full_bytes = 0
    for old in v1:
        message = received[old["seq"]]
        new = json.loads(message.payload)
        assert not errors(validator, old), old
        assert not errors(validator, new), new
        assert new["schema"] == "vigil.event/1.1" and "node" not in new and "priority" not in new
        assert shape(restore(new, message.topic)) == shape(old)
        assert documented_expand()(new, message.topic) == restore(new, message.topic)  # the docs agree
        compact_bytes += len(message.payload)
        full_bytes += len(json.dumps(old, separators=(",", ":"), ensure_ascii=False))
    assert compact_bytes < 0.9 * full_bytes, (compact_bytes, full_bytes)


def test_a_node_can_keep_sending_vigil_event_1(tmp_path):
    """For back offices that still require every field: `events.schema_revision = 1` (TOML number or
    text) sends the complete record, as before."""
    config = tmp_path / "node.toml"
    config.write_text("[events]\nschema_revision = 1\n")
    res = run_agent(
        "--config", str(config), "--source", "synthetic:3", "--max-frames", "150", "--no-realtime",
        "--state-dir", str(tmp_path / "state"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    events = read_events(res.stdout)
    assert events and all(e["schema"] == "vigil.event/1" for e in events)
    assert all(set(SCHEMA["allOf"][0]["then"]["required"]) <= set(e) for e in events)


def test_the_privacy_report_says_which_fields_a_compact_record_leaves_out(tmp_path: Path):
    res = run_agent("privacy", "report", "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    events = next(c for c in json.loads(res.stdout)["outgoing"] if c["name"] == "events")
    assert "vigil.event/1.1" in events["content"]
    sent = {row["field"]: row["sent"] for row in events["fields"]}
    assert sent["id"] == "always" and sent["location"] == "left out when null"
    assert sent["node"].startswith("left out when it is the {node} level of the topic")
    config = tmp_path / "node.toml"
    config.write_text('[events]\nschema_revision = "1"\n')
    res = run_agent("privacy", "report", "--json", "--config", str(config), timeout=60)
    events = next(c for c in json.loads(res.stdout)["outgoing"] if c["name"] == "events")
    sent = {row["field"]: row["sent"] for row in events["fields"]}
    assert "vigil.event/1)" in events["content"] and sent["location"] == sent["node"] == "always"
