"""`agent privacy report`: what leaves the node, derived from the effective config and the schemas.

For a data-protection officer's impact assessment: topics, fields (with the descriptions of
schema/event-v1.json), image sizes, the redaction that is applied, retention, classes analysed,
zones and rules. Everything is derived from the configuration, the event schema, the model manifest
and the stage modules, so the report cannot drift from what the code does. Optional stages add
their own outgoing data by offering `disclose(config) -> list[dict]` in their module (listed in
agent.app.STAGE_BUILDERS); the report calls it.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any, get_args

import agent
from agent import models
from agent.clock import rfc3339
from agent.config.rules import RuleType
from agent.config.schema import Config
from agent.detect.card import model_sha256
from agent.events import wire
from agent.events.emitter import EVENTS_STREAM, THUMBS_STREAM
from agent.uplink.spool import Priority

# Notes on event fields that matter for privacy. Keys must be fields of the event schema (a test
# checks it), so a renamed field cannot leave a stale note behind.
FIELD_NOTES = {
    "label": "object class only (e.g. person, car); no attributes such as age, gender or clothing",
    "bbox": "where the object is in the image; together with `ts` one point of a trajectory",
    "track": "a number for one object within one run of the agent; it restarts with the agent and is "
    "not linked to any identity",
    "thumb": "metadata of the redacted JPEG crop published on the thumbnail topic (see below)",
    "location": "the node's own position (configured or GNSS), not a person's",
    "first_seen": "when the object was first seen (a visit's duration can be derived)",
    "duration_s": "how long an object was tracked or stayed in a zone",
    "zone": "name of a configured zone or line",
}

NOT_COLLECTED = [
    "No video stream and no audio leave the node; full frames only through the audited snapshot command.",
    "No face recognition, no identification and no re-identification across runs of the agent.",
    "No reading of number plates. Note: number plates are not redacted in thumbnails.",
    "Object classes other than those analysed are dropped on the node and never reported.",
]


def event_schema() -> dict[str, Any]:
    """schema/event-v1.json from the checkout or the installed share folder."""
    candidates = [
        Path(agent.__file__).resolve().parents[1] / "schema" / "event-v1.json",
        Path(sys.prefix) / "share" / "vigil" / "schema" / "event-v1.json",
        Path("/usr/share/vigil/schema/event-v1.json"),
    ]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise FileNotFoundError("event schema (schema/event-v1.json) not found; reinstall vigil-agent")


def _face_model(config: Config, state_dir: Path | None) -> dict[str, Any]:
    faces = config.privacy.faces
    info: dict[str, Any] = {
        "redact": faces.redact,
        "model": faces.model,
        "score_threshold": faces.score_threshold,
        "method": faces.method,
        "margin": faces.margin,
        "fallback": faces.fallback,
    }
    try:
        path = models.resolve(faces.model, state_dir)
        info.update(installed=True, path=str(path), sha256=model_sha256(path))
    except models.ModelError as exc:
        info.update(installed=False, problem=str(exc))
    if not faces.redact:
        info["applied"] = "none: face redaction is switched off (privacy.faces.redact = false)"
    elif info["installed"]:
        info["applied"] = f"faces found by {faces.model} are made unrecognisable ({faces.method}), with the head"
    elif faces.fallback == "pixelate_persons":
        info["applied"] = "face model not installed: every detected person in an image is pixelated"
    else:
        info["applied"] = "face model not installed: no thumbnail that shows a detected person is sent"
    return info


def _event_types(config: Config, schema: dict[str, Any]) -> list[dict[str, str]]:
    sources: dict[str, list[str]] = {"object_appeared": ["tracker"], "object_left": ["tracker"]}
    if config.rules.enabled:
        for rule in config.rules.rules:
            if rule.enabled:
                sources.setdefault(rule.type, []).append(f"rule {rule.name!r}")
    if config.tamper.enabled:
        sources.setdefault("tamper", []).append("tamper detection")
        sources.setdefault("tamper_recovered", []).append("tamper detection")
    rows = []
    for kind in schema["properties"]["type"]["enum"]:
        if kind in sources:
            rows.append({"type": kind, "sent": "yes", "source": ", ".join(sources[kind])})
        elif kind in get_args(RuleType):
            rows.append({"type": kind, "sent": "no", "source": "no enabled rule of this type"})
        elif kind.startswith("tamper"):
            rows.append({"type": kind, "sent": "no", "source": "tamper detection is off"})
        else:
            rows.append({"type": kind, "sent": "when it happens", "source": "agent health (no image, no object)"})
    return rows


def _required(schema: dict[str, Any], schema_id: str) -> set[str]:
    """Fields every record of this revision carries (the schema's `required`, plus its if/then parts)."""
    required = set(schema.get("required", []))
    for part in schema.get("allOf", []):
        condition = part.get("if", {}).get("properties", {}).get("schema", {})
        if condition.get("const") == schema_id:
            required |= set(part.get("then", {}).get("required", []))
    return required


def _left_out_when(spec: dict[str, Any]) -> str | None:
    """How a compact (1.1) record signals this field's value by leaving it out, if it does."""
    if "x-vigil-default" in spec:
        return f"left out when it is {spec['x-vigil-default']}"
    if "default" in spec:
        return f"left out when {json.dumps(spec['default'])}"
    return None


def _fields(schema: dict[str, Any], schema_id: str) -> list[dict[str, str]]:
    """One row per field of the record, saying whether the configured revision always sends it. Leaving
    a field out never withholds information: its absence stands for the value given here."""
    required = _required(schema, schema_id)
    compact = schema_id != wire.SCHEMA_V1
    rows = []
    for name, spec in schema["properties"].items():
        sent = "always" if name in required else "when it applies"
        if compact and name not in required and (rule := _left_out_when(spec)):
            sent = rule
        rows.append(
            {
                "field": name,
                "required": "yes" if name in required else "no",
                "sent": sent,
                "meaning": spec.get("description", ""),
                "privacy_note": FIELD_NOTES.get(name, ""),
            }
        )
    return rows


def _stage_disclosures(config: Config) -> list[dict[str, Any]]:
    from agent.app import STAGE_BUILDERS

    found = []
    for module_name in STAGE_BUILDERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # say so in the report rather than leave a silent gap
            found.append({"name": module_name, "topic": "unknown", "content": f"stage not inspectable: {exc}"})
            continue
        disclose = getattr(module, "disclose", None)
        if disclose is not None:
            found.extend(disclose(config) or [])
    return found


def build_report(config: Config, *, config_path: Path | None = None, state_dir: Path | None = None) -> dict:
    schema = event_schema()
    schema_id = wire.schema_id(config.events.schema_revision)
    prefix = f"{config.uplink.topic_prefix}/{config.node.id}"
    ev = config.events
    rules = [r for r in config.rules.rules if r.enabled] if config.rules.enabled else []
    thumb_rules = [r.name for r in rules if r.thumbnail]
    faces = _face_model(config, state_dir)
    masks = [{"name": m.name, "polygon": [list(p) for p in m.polygon]} for m in config.privacy.masks]
    redaction = ["privacy masks blacked out" if masks else "no privacy masks configured", faces["applied"]]
    outgoing = [
        {
            "name": "events",
            "topic": f"{prefix}/{EVENTS_STREAM}",
            "content": f"one JSON object per event ({schema['title']}, {schema_id})",
            "revision": "compact: a field left out stands for the value its row gives, so the same information "
            "leaves as with every field (docs/events.md)"
            if schema_id != wire.SCHEMA_V1
            else "every field of the record is sent",
            "event_types": _event_types(config, schema),
            "fields": _fields(schema, schema_id),
        },
        {
            "name": "thumbnails",
            "topic": f"{prefix}/{THUMBS_STREAM}/{{event id}}",
            "sent": ev.thumbnails,
            "content": "JPEG crop around one object (or the objects counted by a crowding rule)",
            "attached_to": (["object_appeared"] + [f"rule {n!r}" for n in thumb_rules]) if ev.thumbnails else [],
            "max_side_px": ev.thumb_max_side,
            "jpeg_quality": ev.thumb_quality,
            "margin_share": ev.thumb_margin,
            "redaction": redaction,
        },
        {
            "name": "snapshots",
            "topic": "only through the control plane's `snapshot` command (sent as a thumbnail-class record)",
            "content": "one full frame, privacy masks and face redaction applied; every request and every "
            "snapshot sent is written to the audit log",
            "requested_by_rules": [r.name for r in rules if r.snapshot],
            "redaction": redaction,
        },
        *_stage_disclosures(config),
    ]
    broker = config.uplink.broker
    return {
        "report": {
            "generated": rfc3339(time.time()),
            "agent_version": agent.__version__,
            "config": str(config_path) if config_path else "defaults (no config file)",
            "node": config.node.id,
            "site": config.node.site,
        },
        "delivery": {
            "broker": broker.split("@")[-1] if broker else None,
            "encrypted": broker.startswith("mqtts://"),
            "network": "MQTT to the broker above" if broker else "none: no broker is configured, so nothing "
            "leaves the node over the network; events are kept and written to local outputs only",
            "max_bytes_per_day": config.uplink.max_bytes_per_day,
        },
        "analysis": {
            "where": "on the node; video is analysed in memory and not recorded",
            "classes_analysed": config.detect.classes or ["every label of the model"],
            "model": config.detect.model,
            "min_score": config.detect.score_threshold,
            "tamper_detection": config.tamper.enabled,
        },
        "outgoing": outgoing,
        "redaction": {"masks": masks, "faces": faces},
        "zones": {
            "timezone": config.rules.timezone,
            "zones": [{"name": z.name, "polygon": [list(p) for p in z.polygon]} for z in config.rules.zones],
            "lines": [{"name": ln.name, "points": [list(p) for p in ln.points]} for ln in config.rules.lines],
            "rules": [_rule_row(r) for r in rules],
        },
        "retention": {
            "spool_days": {
                p.label: getattr(config.spool, f"ttl_{p.label}_days") for p in Priority
            },
            "spool_budget_mb": config.spool.budget_mb,
            "note": "records wait in the spool until the broker acknowledges them or their TTL ends "
            "(measured in running time, so a wrong clock cannot keep them longer)",
            "local_thumbnails": {
                "kept": "in memory only, for the local status page; never written to disk, gone when "
                "the agent stops",
                "max_files": config.privacy.local_thumbnails,
                "ttl_days": config.spool.ttl_thumb_days,
            },
            "audit_log": {
                "folder": "<state_dir>/audit",
                "rotated_at_kb": config.privacy.audit.max_kb,
                "rotated_files_kept": config.privacy.audit.keep,
                "content": "configuration and rule changes, snapshot requests, model changes, starts; "
                "who or what asked; no images",
            },
        },
        "not_collected": NOT_COLLECTED,
    }


def _rule_row(rule: Any) -> dict[str, Any]:
    return {
        "name": rule.name,
        "type": rule.type,
        "where": rule.zone or rule.line,
        "classes": rule.classes or ["all analysed"],
        "schedule": [f"{','.join(w.days)} {w.start}-{w.end}" for w in rule.schedule] or ["always"],
        "priority": rule.priority,
        "thumbnail": rule.thumbnail,
        "snapshot": rule.snapshot,
        "output": rule.output,
    }


# -- Markdown -------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    elif value is None:
        value = "-"
    return str(value).replace("|", "/").replace("\n", " ")


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> list[str]:
    if not rows:
        return ["(none)", ""]
    columns = columns or list(rows[0])
    out = ["| " + " | ".join(c.replace("_", " ") for c in columns) + " |", "|" + " --- |" * len(columns)]
    out += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return [*out, ""]


def _pairs(data: dict[str, Any]) -> list[str]:
    return [*(f"- **{k.replace('_', ' ')}**: {_cell(v)}" for k, v in data.items()), ""]


def render_markdown(report: dict[str, Any]) -> str:
    r = report["report"]
    out = [
        f"# What leaves node `{r['node']}`" + (f" ({r['site']})" if r["site"] else ""),
        "",
        f"Generated {r['generated']} by vigil-agent {r['agent_version']} from {r['config']}.",
        "Derived from the effective configuration, the event schema and the model manifest.",
        "",
        "## Delivery",
        "",
        *_pairs(report["delivery"]),
        "## Analysis on the node",
        "",
        *_pairs(report["analysis"]),
        "## Outgoing data",
        "",
    ]
    for channel in report["outgoing"]:
        out += [f"### {channel['name']}", ""]
        scalars = {k: v for k, v in channel.items() if k != "name" and not isinstance(v, list)}
        lists = {k: v for k, v in channel.items() if isinstance(v, list)}
        out += _pairs(scalars)
        for key, value in lists.items():
            if value and isinstance(value[0], dict):
                out += [f"**{key.replace('_', ' ')}**", "", *_table(value)]
            else:
                out += [f"- **{key.replace('_', ' ')}**: {_cell(value) or '(none)'}", ""]
    red = report["redaction"]
    out += ["## Redaction", "", "### Privacy masks (blacked out before analysis and in every image)", ""]
    out += _table(red["masks"], ["name", "polygon"])
    out += ["### Faces", "", *_pairs(red["faces"])]
    z = report["zones"]
    out += [f"## Zones, lines and rules (schedules in {z['timezone']})", "", "### Zones", ""]
    out += _table(z["zones"], ["name", "polygon"])
    out += ["### Lines", "", *_table(z["lines"], ["name", "points"]), "### Rules", "", *_table(z["rules"])]
    ret = report["retention"]
    out += ["## Retention on the node", ""]
    out += _table([{"class": k, "days": v} for k, v in ret["spool_days"].items()])
    out += [f"Spool budget {ret['spool_budget_mb']} MB; {ret['note']}.", ""]
    out += ["### Local thumbnails", "", *_pairs(ret["local_thumbnails"])]
    out += ["### Audit log", "", *_pairs(ret["audit_log"])]
    out += ["## Not collected", "", *(f"- {line}" for line in report["not_collected"]), ""]
    return "\n".join(out)
