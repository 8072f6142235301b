"""Where live configuration changes (`config/set`, `model/update`) are kept so a restart keeps them.

Decision (docs/control.md): a change is written into the config file the agent was started with
when that file is writable by the agent (a laptop, a hand-managed node); otherwise (no `--config`,
or a provisioned /etc/vigil/config.toml that systemd's ProtectSystem=strict keeps read-only and that
re-provisioning rewrites) into an overlay, ``<state_dir>/config-overlay.toml``. Either way the write
is atomic (temp file, fsync, rename, fsync of the folder) and only the changed keys are touched:
values that came from the environment or flags are never baked into a file.

Precedence at start: defaults < config file < overlay < environment < command-line flags, so the
overlay holds exactly the live changes and an operator who set a key by environment or flag still
wins (the `config/set` reply says so).
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from agent.config.loader import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    env_overrides,
    load_config,
    read_toml,
    validate,
)
from agent.control.tunable import gpio_problems, may_persist
from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

OVERLAY_NAME = "config-overlay.toml"
OVERLAY_HEADER = (
    "# Live configuration changes made through the control plane (config/set, model/update).\n"
    "# Loaded above the config file and below environment and flags; delete this file and restart\n"
    "# to return to the config file. Keys are dotted paths; an empty string means 'unset'.\n"
)
UNSET = ""  # TOML has no null: an overlay value of "" for a nullable key means "back to unset"


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def toml_ready(value: Any) -> Any:
    """TOML has no null: None inside tables means "default" and is left out (as `dump_toml` does)."""
    if isinstance(value, dict):
        return {k: toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [toml_ready(v) for v in value]
    return value


def _header(text: str) -> str:
    """The leading comment block of a TOML file (kept when the file is rewritten)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            lines.append(line)
        else:
            break
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def read_overlay(path: Path) -> dict[str, Any]:
    """Dotted key -> value (None for unset) of an overlay file; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        issue = ConfigIssue("", str(path), f"cannot read the live-change overlay: {exc}", str(path))
        raise ConfigError([issue]) from None
    values = data.get("set", {})
    if not isinstance(values, dict):
        raise ConfigError([ConfigIssue("set", values, "must be a table of dotted keys", str(path))])
    return {str(k): (None if v == UNSET else v) for k, v in values.items()}


class ConfigStore:
    """Persists live changes (see the module docstring for where and why)."""

    def __init__(self, file: Path | None, state_dir: Path) -> None:
        self.file = file
        self.overlay = state_dir / OVERLAY_NAME

    def file_writable(self) -> bool:
        f = self.file
        return f is not None and f.is_file() and os.access(f, os.W_OK) and os.access(f.parent, os.W_OK)

    @property
    def target(self) -> Path:
        return self.file if self.file is not None and self.file_writable() else self.overlay

    def save(self, values: Mapping[str, Any]) -> Path:
        """Persist dotted key -> JSON-ready value (None: unset) atomically; the path written."""
        if self.file is not None and self.file_writable():
            self._save_file(self.file, values)
            if self.overlay.is_file():
                self._drop_from_overlay(values.keys())
            return self.file
        self._save_overlay(values)
        return self.overlay

    def _save_file(self, path: Path, values: Mapping[str, Any]) -> None:
        data, text = read_toml(path)
        for key, value in values.items():
            set_path(data, key, toml_ready(value))
        validate(data, {(): str(path)})  # never write a file the agent would refuse at its next start
        mode = path.stat().st_mode & 0o777
        atomic_write(path, (_header(text) + tomli_w.dumps(data)).encode(), mode=mode)

    def _save_overlay(self, values: Mapping[str, Any]) -> None:
        current = persistable(read_overlay(self.overlay), self.overlay)
        for key in list(current):
            if any(key == k or key.startswith(k + ".") for k in values):
                del current[key]  # a whole table set now replaces earlier changes inside it
        current.update({k: toml_ready(v) for k, v in values.items()})
        body = {"set": {k: (UNSET if v is None else v) for k, v in sorted(current.items())}}
        atomic_write(self.overlay, (OVERLAY_HEADER + tomli_w.dumps(body)).encode(), mode=0o640)

    def _drop_from_overlay(self, keys: Any) -> None:
        keys = list(keys)
        current = read_overlay(self.overlay)
        kept = {k: v for k, v in current.items() if not any(k == c or k.startswith(c + ".") for c in keys)}
        if kept != current:
            body = {"set": {k: (UNSET if v is None else v) for k, v in sorted(kept.items())}}
            atomic_write(self.overlay, (OVERLAY_HEADER + tomli_w.dumps(body)).encode(), mode=0o640)


def load_with_overlay(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    override_origins: Mapping[tuple[str, ...], str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """`load_config`, plus the live-change overlay of the resulting state directory, with the
    precedence defaults < file < overlay < environment < flags."""
    from agent.paths import state_dir_for

    environ = os.environ if environ is None else environ
    loaded = load_config(path, environ=environ, overrides=overrides, override_origins=override_origins)
    overlay_path = state_dir_for(loaded.config) / OVERLAY_NAME
    overlay = persistable(read_overlay(overlay_path), overlay_path)
    if not overlay:
        return loaded
    result = _layered(path, environ, overrides, override_origins, overlay, overlay_path)
    base = loaded.config
    problems = gpio_problems(result.config.rules.outputs, base.rules.outputs, base.control.remote_gpio_pins)
    if problems:  # the file's own rules stand; the overlay's rule changes are not applied
        log.error("ignoring the rules kept in %s: %s", overlay_path, "; ".join(problems))
        overlay = {k: v for k, v in overlay.items() if not (k == "rules" or k.startswith("rules."))}
        if not overlay:
            return loaded
        result = _layered(path, environ, overrides, override_origins, overlay, overlay_path)
    return result


def persistable(overlay: dict[str, Any], origin: Path) -> dict[str, Any]:
    """The overlay's keys that may be kept there (agent.control.tunable); the others are ignored with
    an error: a file the agent can write must not change what only the config file may set."""
    refused = sorted(k for k in overlay if not may_persist(k))
    if refused:
        log.error(
            "ignoring %s in %s: only live-tunable settings may be kept there (set them in the config file)",
            ", ".join(refused),
            origin,
        )
    return {k: v for k, v in overlay.items() if may_persist(k)}


def _layered(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
    override_origins: Mapping[tuple[str, ...], str] | None,
    overlay: dict[str, Any],
    overlay_path: Path,
) -> LoadedConfig:
    env_data, env_origins = env_overrides(environ)
    layered: dict[str, Any] = dict(overlay)
    origins: dict[tuple[str, ...], str] = {tuple(k.split(".")): f"overlay {overlay_path}" for k in overlay}
    for key_path, origin in env_origins.items():  # the environment beats the overlay: re-apply it on top
        node: Any = env_data
        for part in key_path:
            node = node[part]
        layered[".".join(key_path)] = node
        origins[key_path] = origin
    for key, value in (overrides or {}).items():
        layered[key] = value
    for key in overrides or {}:
        origins[tuple(key.split("."))] = (override_origins or {}).get(tuple(key.split(".")), "command line")
    return load_config(path, environ=environ, overrides=layered, override_origins=origins)
