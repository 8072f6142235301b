"""The event record as it leaves the node: `vigil.event/1` (every field, always) or its compact
revision `vigil.event/1.1` (the default), which leaves out what a consumer can put back exactly.

Revision 1.1 is additive: no field changes name, type or meaning, and schema/event-v1.json accepts
both. A field is left out only when its value is the one the schema documents for its absence
(docs/events.md has the table and a reference `expand()`):

- `priority` "normal", `thumb` null, `location` null, `link` null (the schema's `default`s);
- `node`: always, since the topic names it (`{prefix}/{node}/events`, which the broker's ACL ties to
  the node's certificate);
- `clock.trusted`: follows from `clock.source` (true for ntp and gnss);
- `last_seen` when it equals `ts` (track events, which carry `first_seen`: an object just confirmed).

`bbox` is sent to 3 decimals (a tenth of a percent of the frame, finer than the input of any detector
the agent runs); everything else is unchanged. Why: metadata is most of what a metered link carries
(bench/economy.py; ~20 % fewer bytes per event).
"""

from __future__ import annotations

from typing import Any, Literal

from agent.events.types import EventBody

SCHEMA_V1 = "vigil.event/1"
SCHEMA_V1_1 = "vigil.event/1.1"
Revision = Literal["1", "1.1"]

OMITTED_WHEN = {"priority": "normal", "thumb": None, "location": None, "link": None}
TRUSTED_SOURCES = frozenset({"ntp", "gnss"})
BBOX_DECIMALS = 3


def schema_id(revision: Revision) -> str:
    return SCHEMA_V1 if revision == "1" else SCHEMA_V1_1


def compact(body: EventBody) -> dict[str, Any]:
    """The 1.1 form of a complete event body (before the spool adds `id` and `seq`).

    A plain dict, not a TypedDict: 1.1 leaves out fields EventBody requires (node, priority, thumb,
    location, clock.trusted) whenever their value is the documented default, key by key."""
    out: dict[str, Any] = {"schema": SCHEMA_V1_1}
    for key, value in body.items():
        if key in ("schema", "node") or (key in OMITTED_WHEN and value == OMITTED_WHEN[key]):
            continue
        out[key] = value
    clock = out.get("clock")
    derivable = isinstance(clock, dict) and "source" in clock
    if derivable and isinstance(clock, dict) and clock.get("trusted") == (clock["source"] in TRUSTED_SOURCES):
        out["clock"] = {k: v for k, v in clock.items() if k != "trusted"}
    if "first_seen" in out and "last_seen" in out and out["last_seen"] == out.get("ts"):
        del out["last_seen"]
    bbox = out.get("bbox")
    if isinstance(bbox, list) and all(isinstance(v, float | int) for v in bbox):
        out["bbox"] = [round(float(v), BBOX_DECIMALS) for v in bbox]
    return out


def for_wire(body: EventBody, revision: Revision) -> dict[str, Any]:
    """The body to commit for the configured revision."""
    if revision == "1":
        return {**body, "schema": SCHEMA_V1}
    return compact(body)
