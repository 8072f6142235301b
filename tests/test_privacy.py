"""Audit log, retention of local thumbnails, the privacy report, and the privacy stage in the real agent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config.schema import Config
from agent.events.local_thumbs import LocalThumbnails, remove_legacy_folder
from agent.privacy.audit import AuditLog
from agent.privacy.report import FIELD_NOTES, build_report, event_schema, render_markdown
from agent.uplink.spool import Priority, Record
from tests.conftest import CENTERFACE, read_events, run_agent, shared

JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 64 + b"\xff\xd9"


# -- audit log ------------------------------------------------------------------------------------


def test_audit_entries_are_chained_and_tampering_shows(tmp_path: Path):
    log = AuditLog(tmp_path / "audit")
    log.record("config.change", "mqtt:cmd/config/set req=1", {"keys": ["detect.score_threshold"]})
    log.record("snapshot.request", "rule:loitering", {"zone": "bench"})
    log.record("model.change", "mqtt:cmd/model/update req=2", {"to": "yolox-nano"})
    entries = list(log.entries())
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert [e["action"] for e in entries] == ["config.change", "snapshot.request", "model.change"]
    assert entries[1]["actor"] == "rule:loitering" and entries[0]["details"]["keys"] == ["detect.score_threshold"]
    assert log.verify() == []
    again = AuditLog(tmp_path / "audit")  # a restart continues the chain
    again.record("agent.start", "startup")
    assert again.verify() == [] and list(again.entries())[-1]["seq"] == 4

    lines = log.path.read_text().splitlines()
    lines[1] = lines[1].replace("loitering", "nothing")
    log.path.write_text("\n".join(lines) + "\n")
    assert log.verify() == ["audit.jsonl:3: chain broken (an earlier entry was altered or removed)"]
    del lines[1]
    log.path.write_text("\n".join(lines) + "\n")
    assert any("seq 3 follows 1" in p for p in log.verify())


def test_audit_log_rotates_by_size_and_stays_verifiable(tmp_path: Path):
    log = AuditLog(tmp_path / "audit", max_bytes=700, keep=2)
    for i in range(30):  # not privacy-relevant: nothing waits for the back office to see the head
        log.record("modem.reset", f"mqtt:cmd/modem/reset id=r{i}", {"i": i})
    files = log.files()
    assert [p.name for p in files] == ["audit.2.jsonl", "audit.1.jsonl", "audit.jsonl"]
    assert all(p.stat().st_size <= 700 for p in files)
    assert log.verify() == []
    seqs = [e["seq"] for e in log.entries()]
    assert seqs == list(range(seqs[0], 31))  # the oldest entries went with the oldest file
    assert AuditLog.open(tmp_path / "audit") is AuditLog.open(tmp_path / "audit" / ".." / "audit")


# -- local thumbnails expire ----------------------------------------------------------------------


class Uptime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def thumb(record_id: str, up: float) -> Record:
    return Record(1, record_id, "thumbs", None, Priority.THUMB, f"thumbs/{record_id}", JPEG, False, up)


def test_local_thumbnails_expire_by_running_time(tmp_path: Path):
    uptime = Uptime()
    kept = LocalThumbnails(ttl_s=100.0, uptime=uptime)
    kept([thumb("a", 0.0)])
    uptime.now = 50.0
    kept([thumb("b", 50.0)])
    uptime.now = 120.0
    assert kept.get("a") is None  # past its TTL: never served, even before the sweep
    assert kept.expire() == 1 and len(kept) == 1 and kept.get("b") == JPEG
    uptime.now = 151.0
    assert kept.get("b") is None and kept.expire() == 1 and len(kept) == 0


def test_local_thumbnails_are_bounded_in_number_and_bytes():
    kept = LocalThumbnails(max_files=3)
    kept([thumb(f"t{i}", float(i)) for i in range(5)])
    assert [t for t in ("t0", "t1", "t2", "t3", "t4") if kept.get(t)] == ["t2", "t3", "t4"]
    small = LocalThumbnails(max_files=100, max_bytes=3 * len(JPEG))
    small([thumb(f"s{i}", float(i)) for i in range(5)])
    small([Record(9, "huge", "thumbs", None, Priority.THUMB, "thumbs/huge", JPEG * 4, False, 9.0)])
    assert [t for t in ("s0", "s1", "s2", "s3", "s4", "huge") if small.get(t)] == ["s2", "s3", "s4"]
    assert small.status()["bytes"] == 3 * len(JPEG) and small.status()["pushed_out"] == 2


def test_thumbnail_files_of_older_agents_are_removed(tmp_path: Path):
    """Older agents kept thumbnails as files; nothing would ever expire them now, so they go at start."""
    folder = tmp_path / "thumbs"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "index.jsonl"):
        (folder / name).write_bytes(JPEG)
    assert remove_legacy_folder(folder) == 2 and not folder.exists()
    assert remove_legacy_folder(folder) == 0


# -- the report -----------------------------------------------------------------------------------


def test_field_notes_name_real_schema_fields():
    assert set(FIELD_NOTES) <= set(event_schema()["properties"])


CONFIG = """
[node]
id = "pole-7"
site = "Market Street"

[uplink]
broker = "mqtts://node:secret@broker.city.example:8883"
topic_prefix = "city"

[detect]
classes = ["person", "car"]

[events]
thumb_max_side = 256

[spool]
ttl_thumb_days = 2.0

[privacy]
masks = [{{name = "flats", polygon = [[0.0, 0.0], [0.4, 0.0], [0.4, 0.3]]}}]
faces = {{model = "{face_model}"}}

[rules]
timezone = "Europe/Amsterdam"
zones = [{{name = "crossing", polygon = [[0.2, 0.6], [0.8, 0.6], [0.8, 1.0], [0.2, 1.0]]}}]

[[rules.rules]]
name = "night loitering"
type = "dwell"
zone = "crossing"
classes = ["person"]
dwell_s = 120
snapshot = true
schedule = [{{start = "22:00", end = "06:00"}}]
"""


def test_report_is_derived_from_config_schema_and_models(tmp_path: Path):
    path = tmp_path / "node.toml"
    path.write_text(CONFIG.format(face_model=shared(CENTERFACE)))
    res = run_agent("privacy", "report", "--config", str(path), "--json", "--state-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["delivery"]["broker"] == "broker.city.example:8883" and report["delivery"]["encrypted"]
    assert "secret" not in res.stdout
    events, thumbs, snapshots = report["outgoing"][:3]
    assert events["topic"] == "city/pole-7/events" and thumbs["topic"] == "city/pole-7/thumbs/{event id}"
    assert [f["field"] for f in events["fields"]] == list(event_schema()["properties"])
    sent = {row["type"]: row for row in events["event_types"]}
    assert sent["dwell"]["sent"] == "yes" and "night loitering" in sent["dwell"]["source"]
    assert sent["line_crossing"]["sent"] == "no" and sent["tamper"]["sent"] == "yes"
    assert thumbs["max_side_px"] == 256 and thumbs["attached_to"] == ["object_appeared", "rule 'night loitering'"]
    assert snapshots["requested_by_rules"] == ["night loitering"]
    assert report["analysis"]["classes_analysed"] == ["person", "car"]
    faces = report["redaction"]["faces"]
    assert faces["installed"] and faces["sha256"].startswith("09189dea")
    assert report["redaction"]["masks"][0]["name"] == "flats"
    (rule,) = report["zones"]["rules"]
    assert rule["schedule"] == ["mon,tue,wed,thu,fri,sat,sun 22:00-06:00"] and rule["where"] == "crossing"
    assert report["retention"]["local_thumbnails"]["ttl_days"] == 2.0
    assert report["retention"]["spool_days"]["thumb"] == 2.0
    # everything else that leaves is disclosed too: status, telemetry, command replies, the local page
    others = {channel["name"]: channel for channel in report["outgoing"][3:]}
    assert {"status", "telemetry", "command replies", "local status page"} <= set(others)
    assert others["telemetry"]["topic"] == "city/pole-7/telemetry"
    assert others["status"]["topic"] == "city/pole-7/status"
    assert "IMEI" in others["command replies"]["content"]

    markdown = run_agent("privacy", "report", "--config", str(path), "--state-dir", str(tmp_path))
    assert markdown.returncode == 0, markdown.stderr
    text = markdown.stdout
    assert text.startswith("# What leaves node `pole-7` (Market Street)")
    for heading in ("## Delivery", "## Outgoing data", "## Redaction", "## Zones, lines and rules", "## Retention"):
        assert heading in text
    assert "| night loitering | dwell | crossing | person |" in text


def test_report_without_broker_or_face_model_says_so(tmp_path: Path):
    report = build_report(Config(), state_dir=tmp_path)
    assert report["delivery"]["broker"] is None and "nothing leaves the node" in report["delivery"]["network"]
    assert not {"status", "telemetry", "command replies"} & {c["name"] for c in report["outgoing"]}
    faces = report["redaction"]["faces"]
    assert not faces["installed"] and "every detected person" in faces["applied"]
    assert "agent models fetch centerface" in faces["problem"]
    assert "## Not collected" in render_markdown(report)


def test_bad_config_for_report_is_one_clear_error(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('[rules]\ntimezone = "Nowhere/Land"\n')
    res = run_agent("privacy", "report", "--config", str(path))
    assert res.returncode == 2 and "unknown IANA time zone" in res.stderr and "Traceback" not in res.stderr


# -- in the running agent -------------------------------------------------------------------------

AGENT_CONFIG = """
[detect]
score_threshold = {threshold}

[privacy]
masks = [{{name = "upstairs", polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 0.25], [0.0, 0.25]]}}]

[rules]
lines = [{{name = "middle", points = [[0.5, 0.3], [0.5, 1.0]]}}]
rules = [{{name = "passers", type = "line_crossing", line = "middle"}}]
"""


@pytest.mark.slow
def test_agent_redacts_audits_and_reports_rule_events(tmp_path: Path, state_dir: Path, event_validator):
    def run(threshold: float) -> list[dict]:
        path = tmp_path / "node.toml"
        path.write_text(AGENT_CONFIG.format(threshold=threshold))
        res = run_agent(
            "--simulate", "--config", str(path), "--source", "synthetic:3", "--max-frames", "250",
            "--no-realtime", "--state-dir", str(state_dir),
        )
        assert res.returncode == 0, res.stderr
        assert "applying the pixelate_persons fallback" in res.stderr  # said once, loudly
        return read_events(res.stdout)

    events = run(0.4)
    for event in events:
        event_validator.validate(event)
    crossings = [e for e in events if e["type"] == "line_crossing"]
    assert crossings and all(e["rule"] == "passers" and e["zone"] == "middle" for e in crossings)
    assert {e["direction"] for e in crossings} <= {"left_to_right", "right_to_left"}
    people = [e for e in events if e.get("label") == "person" and e.get("thumb")]
    assert people and all("pixelated" in e["thumb"]["redaction"] for e in people)
    # thumbnails are kept for the status page in memory only: no image file is ever written
    assert not (state_dir / "thumbs").exists()
    assert not [p for p in state_dir.rglob("*") if p.suffix in (".jpg", ".jpeg", ".tmp")]

    run(0.45)  # the operator edited the file on the node
    audit = AuditLog(state_dir / "audit")
    actions = [(e["action"], e["details"]) for e in audit.entries()]
    assert [a for a, _ in actions] == ["agent.start", "config.change", "agent.start"]
    assert actions[1][1]["keys"] == ["detect.score_threshold"]
    assert actions[0][1]["masks"] == ["upstairs"] and actions[0][1]["faces"] == "pixelate_persons"
    res = run_agent("privacy", "audit", "--verify", "--state-dir", str(state_dir))
    assert res.returncode == 0 and "3 entries, chain intact" in res.stdout


def test_live_mask_changes_are_validated_and_audited(tmp_path: Path):
    from pydantic import ValidationError

    from agent.config.privacy import FacesConfig
    from agent.privacy import MaskSet, Redactor
    from agent.privacy.stage import PrivacyStage

    audit = AuditLog(tmp_path / "audit")
    stage = PrivacyStage(Config(), Redactor(MaskSet(), None, FacesConfig()), audit)
    stage.set_masks([{"name": "door", "polygon": [[0, 0], [0.2, 0], [0.2, 0.5]]}], actor="mqtt:cmd/config/set req=3")
    with pytest.raises(ValidationError):
        stage.set_masks([{"name": "bad", "polygon": [[0, 0], [2, 0], [0, 1]]}], actor="mqtt:cmd/config/set req=4")
    assert stage.redactor.masks.names == ["door"]
    (entry,) = list(audit.entries())
    assert entry["action"] == "masks.update" and entry["details"] == {"before": [], "after": ["door"]}
    assert entry["actor"] == "mqtt:cmd/config/set req=3"
