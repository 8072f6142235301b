"""What may change at run time, and what may be kept across restarts outside the config file.

`config/set` changes only the keys below, and the live-change overlay
(``<state_dir>/config-overlay.toml``, agent.control.persist) may only ever hold those keys plus
`detect.model` (written by `model/update`). The overlay lives in the state directory, which the agent
itself can write, while a provisioned config file is root's (/etc/vigil, read-only to the agent): if
the overlay could hold any key, whatever controls the agent's files could make a change of, say,
`uplink.broker`, `control.unsigned_role` or `privacy.faces.redact` permanent. So anything else found
in the overlay is ignored, with an error in the log.

GPIO lines are hardware: a relay may switch a lamp, a siren or the modem's power. A live change may
drive a GPIO line only when the node's own configuration (`control.remote_gpio_pins`, which no
command can change) allows that pin, or when the output is exactly one the node already has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent.config.rules import OutputConfig

# Keys (and whole tables) that may change while the agent runs.
TUNABLE: tuple[str, ...] = (
    "detect.score_threshold",
    "detect.nms_iou",
    "detect.min_box_area",
    "detect.classes",
    "motion",
    "capture.fps",
    "rules",
    "privacy.masks",
    "tamper",
    "uplink.max_bytes_per_s",
    "uplink.max_bytes_per_day",
    "telemetry",
    "events.thumbnails",
)
NOT_LIVE: tuple[str, ...] = ("tamper.enabled",)  # the tamper stage is built (or not) at start
# Written to the overlay by commands other than config/set.
PERSISTED_BY_COMMANDS: tuple[str, ...] = ("detect.model",)


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_tunable(key: str) -> bool:
    """Whether `config/set` may change `key` (a dotted key or a whole table)."""
    return not _under(key, NOT_LIVE) and _under(key, TUNABLE)


def may_persist(key: str) -> bool:
    """Whether the live-change overlay may hold `key`."""
    return is_tunable(key) or key in PERSISTED_BY_COMMANDS


def gpio_problems(
    wanted: Sequence[OutputConfig], current: Sequence[OutputConfig], allowed_pins: Sequence[int]
) -> list[str]:
    """Why the gpio outputs in `wanted` may not be set remotely (empty: they may). An output is
    allowed when its pin is in `allowed_pins` or it is identical to one in `current`."""
    have = {(o.name, o.kind, o.pin, o.active_high) for o in current if o.kind == "gpio"}
    problems = []
    for output in wanted:
        if output.kind != "gpio" or output.pin in allowed_pins:
            continue
        if (output.name, output.kind, output.pin, output.active_high) in have:
            continue
        problems.append(
            f"rules.outputs {output.name!r}: GPIO {output.pin} is not in control.remote_gpio_pins "
            f"({', '.join(map(str, allowed_pins)) or 'empty'}), which only the node's own config sets"
        )
    return problems
