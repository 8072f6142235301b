"""The event schema the ingest checks against: schema/event-v1.json, read from the checkout or the
installed share folder, with the ingest's own tolerance for what the contract lets nodes change.

Version 1 may gain fields and may leave optional ones out (a compact encoding omits nulls and
defaults, e.g. `location: null` or the default `priority`), so the ingest requires only what it
cannot store an event without (identity, order and time) and checks every field that is present
against the schema. A new event type is stored (the enum is the list known today, not a promise);
another schema version (`vigil.event/2`) is quarantined until an ingest that knows it replays it.

The check runs for every event, so it is compiled to Python once (fastjsonschema: ~25 µs an event
where a generic validator takes ~0.5 ms, which alone would cap the ingest near 2,000 events/s);
a refused event gets the clearer explanation of the generic validator when it is installed.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_IDS = ("vigil.event/1", "vigil.event/1.1")  # 1.1: the compact revision (docs/events.md)
SCHEMA_FAMILY = "vigil.event/"
# Without these an event cannot be deduplicated (id), ordered and checked for loss (seq) or placed in
# time; the node is the topic's (revision 1.1 leaves it out of the record).
REQUIRED = ("schema", "id", "seq", "type", "ts")


def schema_path() -> Path:
    """schema/event-v1.json beside the package (a checkout) or in {prefix}/share/vigil/schema (a wheel)."""
    candidates = [
        Path(__file__).resolve().parents[1] / "schema" / "event-v1.json",
        Path(sys.prefix) / "share" / "vigil" / "schema" / "event-v1.json",
        Path("/usr/share/vigil/schema/event-v1.json"),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("the event schema (schema/event-v1.json) is not installed; reinstall vigil-agent")


def tolerant(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The published schema with only REQUIRED required and `type` open to new event types."""
    relaxed = copy.deepcopy(dict(schema))
    relaxed["required"] = [name for name in REQUIRED if name in relaxed.get("properties", {})]
    relaxed.pop("allOf", None)  # what vigil.event/1 must carry in full: missing fields take their defaults
    properties = relaxed.setdefault("properties", {})
    if "type" in properties:
        properties["type"] = {"type": "string", "minLength": 1, "maxLength": 64}
    return relaxed


class EventValidator:
    """Checks one decoded event; returns None when it may be stored, else a short reason."""

    def __init__(self, schema: Mapping[str, Any] | None = None) -> None:
        import fastjsonschema

        relaxed = tolerant(schema if schema is not None else load_schema())
        self._schema = relaxed
        # The keywords version 1 uses mean the same in draft 7, which the compiler implements. Formats
        # are not judged here: ids are checked by fleet.wire, and a time that does not parse is kept as
        # sent (its epoch left empty) rather than refused.
        compiled = {**relaxed, "$schema": "http://json-schema.org/draft-07/schema#"}
        self._check: Callable[[Any], Any] = fastjsonschema.compile(
            compiled, formats={"uuid": r"^.*$", "date-time": r"^.*$"}
        )
        self._error = fastjsonschema.JsonSchemaValueException
        self._explain: Callable[[Mapping[str, Any]], str | None] | None = _generic_explainer(relaxed)

    def problem(self, body: Mapping[str, Any]) -> str | None:
        try:
            self._check(body)
            return None
        except self._error as exc:
            found = self._explain(body) if self._explain is not None else None
            return (found or str(exc.message).replace("data.", "", 1).replace("data ", "event ", 1))[:300]


def _generic_explainer(schema: dict[str, Any]) -> Callable[[Mapping[str, Any]], str | None] | None:
    """jsonschema's best-matching error, which names the field and the rule more clearly (if installed)."""
    try:
        import jsonschema
    except ImportError:
        return None
    validator = jsonschema.Draft202012Validator(schema)

    def explain(body: Mapping[str, Any]) -> str | None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "event"
        return f"{where}: {error.message}"

    return explain


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(schema_path().read_text(encoding="utf-8"))
    return data
