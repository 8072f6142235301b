"""The command protocol: request envelopes, replies, and the memory of request ids.

Request, on ``{prefix}/{node}/cmd/{name}``::

    {"id": "op-42", "args": {...}, "ts": "2026-05-01T10:00:00Z", "actor": "backoffice/alice",
     "auth": {"nonce": "...", "cert": "...", "sig": "..."}}

`id` is required (1-64 characters of ``A-Za-z0-9._:-``); `args`, `ts` (RFC 3339 or epoch seconds,
when the request was made), `actor` (who asks, for the audit log) and `auth` (the operator's
signature, agent.control.signing; required unless the node accepts unsigned commands) are
optional; anything else is refused. Reply, on ``{prefix}/{node}/cmd_result``::

    {"id": "op-42", "command": "ping", "status": "ok", "message": "pong", "data": {...}, ...}

`status` is "ok" or "error"; long commands (`agent/update`) may first send replies with status
"progress" and the same id (how far a download got); `message` is for people. A request that cannot
be parsed gets a reply with `"id": null`. Freshness and replays: agent.control.replay; who may do
what: agent.control.auth.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.clock import rfc3339
from agent.control.signing import MAX_CERT_CHARS, MAX_CRL_CHARS, MAX_SIG_CHARS, NONCE_PATTERN

log = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
FUTURE_SLACK_S = 60.0
_ID = re.compile(ID_PATTERN)


class CommandError(Exception):
    """A request that is refused; the message goes back to the operator as is."""

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


class Auth(BaseModel):
    """The signature of a signed request (agent.control.signing)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    nonce: str = Field(pattern=NONCE_PATTERN)
    cert: str = Field(max_length=MAX_CERT_CHARS)
    sig: str = Field(max_length=MAX_SIG_CHARS)
    crl: str | None = Field(default=None, max_length=MAX_CRL_CHARS)


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(pattern=ID_PATTERN)
    args: dict[str, Any] = Field(default_factory=dict)
    ts: str | float | int | None = None
    actor: str | None = Field(default=None, max_length=64)
    auth: Auth | None = None


class Strict(BaseModel):
    """Base of every command's arguments: unknown or mistyped fields are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


def describe_validation(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"])
        where = f"{prefix}{where}" if where else (prefix.rstrip(".") or "request")
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown field"
        parts.append(f"{where}: {reason}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_request(payload: bytes) -> Envelope:
    """The envelope of a raw payload; CommandError naming what is wrong."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise CommandError("request is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CommandError(f"request is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise CommandError(f"request must be a JSON object, not {type(data).__name__}")
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        raise CommandError(f"bad request: {describe_validation(exc)}") from None


def salvage_id(payload: bytes) -> str | None:
    """The request id of a request refused before parsing completed, when there is a usable one."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def request_time(ts: str | float | int | None) -> float | None:
    """Epoch seconds of the request's `ts`; CommandError when it is unreadable."""
    if ts is None:
        return None
    if isinstance(ts, bool):
        raise CommandError("ts must be RFC 3339 text or epoch seconds")
    if isinstance(ts, int | float):
        return float(ts)
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CommandError(f"ts {ts!r} is not an RFC 3339 time (e.g. 2026-05-01T10:00:00Z)") from None


def reply(
    request_id: str | None,
    command: str,
    ok: bool,
    message: str,
    data: dict[str, Any] | None = None,
    *,
    node: str,
    progress: bool = False,
) -> bytes:
    """The reply body; `progress` marks an interim report of a long command (its final reply follows)."""
    body: dict[str, Any] = {
        "id": request_id,
        "command": command,
        "status": "progress" if progress else "ok" if ok else "error",
        "message": message,
        "node": node,
        "ts": rfc3339(time.time()),
    }
    if data:
        body["data"] = data
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str).encode()
