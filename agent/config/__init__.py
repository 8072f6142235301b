"""Configuration: pydantic schema, TOML loading with precedence, and errors that point at the line."""

from agent.config.loader import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    dump_toml,
    load_config,
    parse_scalar,
    validate,
)
from agent.config.schema import Config

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "LoadedConfig",
    "dump_toml",
    "load_config",
    "parse_scalar",
    "validate",
]
