"""The event TypedDicts (agent/events/types.py) and schema/event-v1.json say the same thing.

Both artefacts are read as they are: the schema file, and the TypedDicts through get_type_hints and
__required_keys__. Every property of the schema is a key of the type and the other way round, with
the same required-ness (the schema's own `required` plus what its vigil.event/1 branch adds), the
same JSON type(s) and the same enum values, all the way down the nested objects. Adding a field to
one and not the other fails here; so does making it optional in one only, or changing its type.
"""

from __future__ import annotations

import copy
import json
import types
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints, is_typeddict

import numpy as np
import pytest

from agent.capture.base import Frame
from agent.clock import Clock
from agent.events import (
    CameraFields,
    EventBody,
    EventContext,
    EventFactory,
    LinkState,
    Location,
    RuleFields,
    UpdateFields,
)
from agent.events.record import add_fields
from agent.track import Track
from tests.conftest import ROOT

SCHEMA = json.loads((ROOT / "schema" / "event-v1.json").read_text())

# Fields of the record that the node's event body does not have yet: the spool adds `id` and `seq`
# when it commits the body, the publisher adds `historical` to a record that waited out an outage.
ADDED_AFTER_THE_FACTORY = {"id", "seq", "historical"}

JSON_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def v1_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as it applies to a vigil.event/1 record: its `if schema = vigil.event/1` branch
    merged in (more required fields, at the top and in nested objects)."""
    merged = copy.deepcopy(schema)
    for rule in schema.get("allOf", []):
        if rule["if"]["properties"]["schema"].get("const") == "vigil.event/1":
            _merge(merged, rule["then"])
    return merged


def _merge(spec: dict[str, Any], extra: dict[str, Any]) -> None:
    spec["required"] = sorted(set(spec.get("required", [])) | set(extra.get("required", [])))
    for name, sub in extra.get("properties", {}).items():
        _merge(spec["properties"][name], sub)


def _py_alternatives(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [alt for arg in get_args(annotation) for alt in _py_alternatives(arg)]
    return [annotation]


def _py_kind(annotation: Any) -> str:
    if annotation in JSON_TYPE:
        return JSON_TYPE[annotation]
    if get_origin(annotation) is Literal:
        return "enum"
    if get_origin(annotation) is list:
        return "array"
    if is_typeddict(annotation):
        return "object"
    raise AssertionError(f"{annotation!r} has no JSON counterpart")


def _schema_alternatives(spec: dict[str, Any]) -> list[dict[str, Any]]:
    if "oneOf" in spec:
        return [alt for option in spec["oneOf"] for alt in _schema_alternatives(option)]
    if "enum" in spec:
        return [spec]
    kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    return [{**spec, "type": kind} for kind in kinds]


def differences(annotation: Any, spec: dict[str, Any], where: str) -> list[str]:
    """How a Python type and a schema node disagree (empty: they agree)."""
    py = {_py_kind(alt): alt for alt in _py_alternatives(annotation)}
    js = {("enum" if "enum" in alt else alt["type"]): alt for alt in _schema_alternatives(spec)}
    if set(py) != set(js):
        return [f"{where}: the type allows {sorted(py)}, the schema {sorted(js)}"]
    found = []
    for kind, alt in py.items():
        if kind == "enum" and set(get_args(alt)) != set(js[kind]["enum"]):
            typed, listed = sorted(get_args(alt)), sorted(js[kind]["enum"])
            found.append(f"{where}: values {typed} in the type, {listed} in the schema")
        elif kind == "array" and "items" in js[kind]:
            found += differences(get_args(alt)[0], js[kind]["items"], f"{where}[]")
        elif kind == "object":
            found += object_differences(alt, js[kind], where)
    return found


def object_differences(
    typed: type, spec: dict[str, Any], where: str, *, later: frozenset[str] = frozenset()
) -> list[str]:
    """Keys, required-ness and types of a TypedDict against an object of the schema; `later` are
    schema properties the type leaves out on purpose (added after the type's stage)."""
    hints = get_type_hints(typed)
    properties = {k: v for k, v in spec.get("properties", {}).items() if k not in later}
    found = [f"{where}.{k}: in the schema, not in {typed.__name__}" for k in sorted(set(properties) - set(hints))]
    found += [f"{where}.{k}: in {typed.__name__}, not in the schema" for k in sorted(set(hints) - set(properties))]
    required = set(spec.get("required", [])) - later
    for key in sorted(set(hints) & set(properties)):
        if (key in typed.__required_keys__) != (key in required):
            said = "required" if key in required else "optional"
            found.append(f"{where}.{key}: {said} in the schema, not in {typed.__name__}")
        found += differences(hints[key], properties[key], f"{where}.{key}")
    return found


def test_the_event_body_type_is_the_schema_of_a_vigil_event_1_record():
    assert set(SCHEMA["properties"]) >= ADDED_AFTER_THE_FACTORY
    assert object_differences(EventBody, v1_branch(SCHEMA), "event", later=frozenset(ADDED_AFTER_THE_FACTORY)) == []


def test_the_comparison_sees_a_field_added_to_one_side_only():
    """The check above can fail: a field in the schema only, in the type only, made optional in one
    only, typed differently or given another enum value each shows up as a difference."""
    later = frozenset(ADDED_AFTER_THE_FACTORY)
    schema = v1_branch(SCHEMA)

    added = copy.deepcopy(schema)
    added["properties"]["lane"] = {"type": "string"}
    assert object_differences(EventBody, added, "event", later=later) == ["event.lane: in the schema, not in EventBody"]

    class Wider(EventBody):
        lane: NotRequired[str]

    assert object_differences(Wider, schema, "event", later=later) == ["event.lane: in Wider, not in the schema"]

    loosened = copy.deepcopy(schema)
    loosened["required"].remove("thumb")
    assert object_differences(EventBody, loosened, "event", later=later) == [
        "event.thumb: optional in the schema, not in EventBody"
    ]

    nested = copy.deepcopy(schema)
    nested["properties"]["location"]["oneOf"][1]["properties"]["alt_m"] = {"type": "number"}
    assert object_differences(EventBody, nested, "event", later=later) == [
        "event.location.alt_m: in the schema, not in Location"
    ]

    retyped = copy.deepcopy(schema)
    retyped["properties"]["track"]["type"] = "string"
    assert object_differences(EventBody, retyped, "event", later=later) == [
        "event.track: the type allows ['integer'], the schema ['string']"
    ]

    new_kind = copy.deepcopy(schema)
    new_kind["properties"]["type"]["enum"].append("speeding")
    (problem,) = object_differences(EventBody, new_kind, "event", later=later)
    assert problem.startswith("event.type: values") and "speeding" in problem


@pytest.mark.parametrize("part", [RuleFields, CameraFields, UpdateFields, EventContext])
def test_the_producers_field_groups_are_event_fields_of_the_same_type(part: type):
    """What rules, camera health, updates and context providers add are fields of EventBody, typed
    alike (so copying them onto a body needs no cast and cannot invent a field)."""
    body = get_type_hints(EventBody)
    for key, hint in get_type_hints(part).items():
        assert key in body, f"{part.__name__}.{key} is not an event field"
        assert hint == body[key], f"{part.__name__}.{key} is {hint}, the event's {key} is {body[key]}"


def test_a_factory_body_has_exactly_the_fields_its_type_promises():
    """The runtime body, with both context providers and a rule's fields, has every required key of
    EventBody and no key the type does not name (and the nested objects likewise)."""
    location: Location = {"lat": 52.37403, "lon": 4.88969, "mode": "3d", "hdop": 0.9, "age_s": 0.4}
    link: LinkState = {"registration": "home", "technology": "LTE", "operator": "KPN", "signal": {"rssi_dbm": -65.0}}
    factory = EventFactory("types-node", Clock(), lambda: {"name": "truth", "sha256": "0" * 64})
    factory.add_context(lambda: {"location": location})
    factory.add_context(lambda: {"link": link})
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    frame = Frame(image=image, index=3, t=1.0, mono=1.0)
    track = Track(4, (10.0, 20.0, 40.0, 90.0), 0.5, 1.0, label_scores={"person": 0.9}, best_score=0.9)
    fields: RuleFields = {"rule": "loiter", "zone": "bench", "duration_s": 8.0}
    body = factory.from_track("dwell", track, frame, extra=fields)
    keys = set(get_type_hints(EventBody))
    assert EventBody.__required_keys__ <= set(body) <= keys, set(body) ^ keys
    assert body["location"] == location and body["link"] == link
    assert set(body["clock"]) == {"source", "trusted", "boot", "mono"}
    assert body["model"] == {"name": "truth", "sha256": "0" * 64}
    assert list(body)[-3:] == ["rule", "zone", "duration_s"]  # a rule's fields come last, in its order


@pytest.mark.parametrize("part", [RuleFields, CameraFields, UpdateFields])
def test_each_field_group_is_copied_onto_the_body_whole_and_in_order(part: type):
    body: dict[str, Any] = {"schema": "vigil.event/1", "type": "snapshot"}
    fields = {key: object() for key in get_type_hints(part)}
    add_fields(body, fields)
    assert list(body)[2:] == list(fields)
    assert all(body[key] is value for key, value in fields.items())
