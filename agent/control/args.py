"""What a command receives: its context and its arguments (strict pydantic models: unknown or
mistyped fields are refused). Apart from agent.control.commands so the stages that run long commands
(agent.update.updater, agent.control.model_update) can name them without importing the command table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from agent.control.protocol import Strict

if TYPE_CHECKING:
    from agent.control.auth import Caller

Result = tuple[str, dict[str, Any]] | None
ReplyFn = Callable[[bool, str, dict[str, Any] | None], None]


ProgressFn = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Context:
    request_id: str | None
    command: str
    actor: str  # for the audit log: the command, the request id and the verified (or claimed) sender
    reply: ReplyFn  # for commands that answer later
    progress: ProgressFn | None = None  # interim "progress" replies of long commands
    caller: Caller | None = None


class NoArgs(Strict):
    pass


class SnapshotArgs(Strict):
    reason: str = Field(default="operator request", min_length=1, max_length=200)


class ConfigGetArgs(Strict):
    keys: list[str] | None = Field(default=None, max_length=64, description="Dotted keys; default: all.")


class ConfigSetArgs(Strict):
    values: dict[str, Any] = Field(min_length=1, description="Dotted key -> new value.")


class ModelUpdateArgs(Strict):
    url: str | None = Field(default=None, max_length=2048)
    path: str | None = Field(default=None, max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    card: dict[str, Any] | None = None
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")

    @model_validator(mode="after")
    def _one_source(self) -> ModelUpdateArgs:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url or path")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be http:// or https://")
        return self


class AgentUpdateArgs(Strict):
    url: str | None = Field(default=None, max_length=2048)
    path: str | None = Field(default=None, max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the release file.")
    version: str = Field(pattern=r"^[0-9][0-9A-Za-z.+_-]{0,63}$", description="The release's version.")
    force: bool = Field(default=False, description="Allow a downgrade.")

    @model_validator(mode="after")
    def _one_source(self) -> AgentUpdateArgs:
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url or path")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url must be http:// or https://")
        return self


class RestartArgs(Strict):
    reason: str = Field(default="operator request", min_length=1, max_length=200)
