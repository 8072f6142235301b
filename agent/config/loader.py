"""Load a TOML config, overlay environment and command-line values, and explain errors.

Precedence is defaults < file < environment (``VIGIL_SECTION__FIELD=value``) < CLI flags. Every
error names the field path, the bad value, the reason and where the value came from (file and
line, environment variable or flag), because a technician on a pole has only the error to go by.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from agent.config.schema import Config
from agent.urls import hide_userinfo

ENV_PREFIX = "VIGIL_"
ENV_SEPARATOR = "__"


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    value: Any
    reason: str
    origin: str  # "file.toml:12", "env VIGIL_X__Y", "--flag" or "default"

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        if not self.path:  # a rule across sections: the reason names the fields (the value is everything)
            return f"{where}{self.reason}"
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{where}{self.path} = {shown}: {self.reason}"


class ConfigError(Exception):
    """A config that cannot be used; `issues` says exactly why, one entry per bad field."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING = _Missing()

_TABLE_RE = re.compile(r"^\[\s*([^\[\]]+?)\s*\]")
_ARRAY_TABLE_RE = re.compile(r"^\[\[\s*([^\[\]]+?)\s*\]\]")
_KEY_RE = re.compile(
    r"""^((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
)


def _split_dotted(name: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", name)
    return tuple(p.strip("\"'") for p in parts)


def toml_key_lines(text: str) -> dict[tuple[Any, ...], int]:
    """Map each table and key path of a TOML document to its 1-based line number.

    A light scan, not a parser: it is only used to point at the line of a value that the real
    parser (tomllib) already accepted and the schema rejected.
    """
    lines: dict[tuple[Any, ...], int] = {}
    table: tuple[Any, ...] = ()
    array_index: dict[tuple[Any, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if m := _ARRAY_TABLE_RE.match(line):
            path = _split_dotted(m.group(1))
            index = array_index.get(path, -1) + 1
            array_index[path] = index
            table = (*path, index)
            lines.setdefault(path, number)
            lines[table] = number
        elif m := _TABLE_RE.match(line):
            table = _split_dotted(m.group(1))
            lines[table] = number
        elif m := _KEY_RE.match(line):
            lines[(*table, *_split_dotted(m.group(1)))] = number
    return lines


def deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = target
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([ConfigIssue(".".join(path), value, "conflicts with a scalar value", "")])
    node[path[-1]] = value


def parse_scalar(text: str) -> Any:
    """Read an environment or flag value as a TOML value when it is one, else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Collect ``VIGIL_SECTION__FIELD`` variables as a nested dict plus their origins."""
    values: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR))
        if not all(path):
            continue
        _set_path(values, path, parse_scalar(raw))
        origins[path] = f"env {name}"
    return values, origins


@dataclass
class LoadedConfig:
    config: Config
    path: Path | None
    origins: dict[tuple[str, ...], str]


def read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", str(path), "config file not found", str(path))]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [ConfigIssue("", str(path), f"cannot read config file: {exc}", str(path))]
        ) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        if line is None and (m := re.search(r"at line (\d+)", str(exc))):
            line = int(m.group(1))
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError([ConfigIssue("", _MISSING, f"not valid TOML: {exc}", where)]) from None


def _leaf_paths(data: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            paths.extend(_leaf_paths(value, (*prefix, key)))
        else:
            paths.append((*prefix, key))
    return paths


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def _origin_for(loc: tuple[Any, ...], origins: Mapping[tuple[Any, ...], str]) -> str:
    for end in range(len(loc), 0, -1):
        if (found := origins.get(tuple(loc[:end]))) is not None:
            return found
    return "default"


# Values never echoed in errors, logs, `check-config --print` or `config/get`. Besides these, every
# URL-valued setting (camera streams, brokers, serial-over-network ports…, whatever its name) loses
# its `user:password@` part wherever config leaves the process.
SECRET_PATHS = {("modem", "pin"), ("uplink", "password"), ("http", "token")}
HIDDEN = "***"


def redact_secrets(data: Any, _path: tuple[str, ...] = ()) -> Any:
    """A copy of plain config data with every set secret replaced by *** and the userinfo of every
    URL by ***@ (`rtsp://admin:pw@cam/live` → `rtsp://***@cam/live`). `_path`: where `data` sits."""
    if isinstance(data, Mapping):
        return {
            key: HIDDEN
            if (*_path, key) in SECRET_PATHS and value not in (None, "")
            else redact_secrets(value, (*_path, key))
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact_secrets(item, _path) for item in data]
    if isinstance(data, str) and "@" in data and "://" in data:
        return hide_userinfo(data)
    return data


def explain(
    exc: ValidationError, data: Mapping[str, Any], origins: Mapping[tuple[Any, ...], str]
) -> ConfigError:
    issues = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        reason = error["msg"]
        if loc[:2] in SECRET_PATHS:
            error = {**error, "input": HIDDEN}
        elif "input" in error:  # a table's error quotes the whole table: its secrets and URLs too
            error = {**error, "input": redact_secrets(error["input"], tuple(str(p) for p in loc))}
        if error["type"] == "extra_forbidden":
            reason = "unknown setting (check the spelling; see `agent check-config --help`)"
        issues.append(
            ConfigIssue(
                path=".".join(str(p) for p in loc),
                value=error.get("input", _MISSING) if error["type"] != "missing" else _MISSING,
                reason=reason.removeprefix("Value error, "),
                origin=_origin_for(loc, origins) if loc else "",
            )
        )
    return ConfigError(issues)


def validate(data: Mapping[str, Any], origins: Mapping[tuple[Any, ...], str] | None = None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, data, origins or {}) from None


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_origins: Mapping[tuple[str, ...], str] | None = None,
) -> LoadedConfig:
    """Build the effective config: defaults < file < environment < CLI overrides."""
    data: dict[str, Any] = {}
    origins: dict[tuple[Any, ...], str] = {}
    if path is not None:
        file_data, text = read_toml(path)
        lines = toml_key_lines(text)
        data = file_data
        for leaf in _leaf_paths(file_data):
            line = lines.get(leaf)
            origins[leaf] = f"{path}:{line}" if line else str(path)
        for key, line in lines.items():
            origins.setdefault(key, f"{path}:{line}")
    env_data, env_origins = env_overrides(os.environ if environ is None else environ)
    data = deep_merge(data, env_data)
    origins.update(env_origins)
    if overrides:
        nested: dict[str, Any] = {}
        for dotted, value in overrides.items():
            _set_path(nested, tuple(dotted.split(".")), value)
            origins[tuple(dotted.split("."))] = (override_origins or {}).get(
                tuple(dotted.split(".")), "command line"
            )
        data = deep_merge(data, nested)
    return LoadedConfig(config=validate(data, origins), path=path, origins=origins)


def dump_toml(config: Config, *, hide_secrets: bool = False) -> str:
    """Serialise a config back to TOML (to persist live changes, and secrets hidden for `check-config --print`)."""
    data = config.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(redact_secrets(data) if hide_secrets else data)
