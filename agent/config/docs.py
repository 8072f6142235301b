"""Render the config reference (docs/config.md) from the schema, so the two cannot drift apart."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from agent.config.schema import Config


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "unset"
    return f"`{json.dumps(value, default=str)}`"


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        sub = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if sub is None:  # Optional[Model]
            args = [
                a
                for a in getattr(annotation, "__args__", ())
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            sub = args[0] if args else None
        if sub is not None:
            nested.append((name, sub))
            continue
        rows.append(f"| `{name}` | {_default(field)} | {(field.description or '').replace('|', '/')} |")
    if rows:
        out.append(f"\n## [{prefix}]\n" if prefix else "\n## top level\n")
        out.append("| key | default | meaning |\n| --- | --- | --- |")
        out.extend(rows)
    for name, sub in nested:
        _section(sub, f"{prefix}.{name}" if prefix else name, out)


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `agent/config/schema.py` (`python -m agent.config.docs > docs/config.md`).",
        "One TOML file; every table and key below is optional. Unknown keys are errors.",
        "Precedence: defaults < file < environment (`VIGIL_SECTION__KEY=value`, e.g.",
        "`VIGIL_UPLINK__BROKER=mqtts://broker:8883`) < command-line flags.",
        "Check a file with `agent check-config FILE`; errors name the key, the value, the reason and the line.",
    ]
    _section(Config, "", out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
