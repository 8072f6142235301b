"""What flows through the spool: records offered by stages, and records as committed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Priority(IntEnum):
    CRITICAL = 0
    EVENT = 1
    THUMB = 2
    TELEMETRY = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# what goes first when the spool must make room: telemetry, then thumbnails, then old metadata
EVICTION_ORDER = (Priority.TELEMETRY, Priority.THUMB, Priority.EVENT, Priority.CRITICAL)


def encode_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Outgoing:
    """A record offered to the spool. `topic` is relative to ``{prefix}/{node}/`` and may contain
    ``{id}``, replaced at commit by the id of the first record of its group (thumbnails name their
    event). JSON bodies get `id` and, on sequenced streams, `seq` added at commit."""

    stream: str
    priority: Priority
    topic: str
    body: dict[str, Any] | bytes
    retain: bool = False
    sequenced: bool = True

    @property
    def approx_size(self) -> int:
        return len(self.body) if isinstance(self.body, bytes) else 256 + 64 * len(self.body)


@dataclass(frozen=True)
class Record:
    """A committed record as the publisher and listeners see it."""

    rowid: int
    id: str
    stream: str
    seq: int | None
    priority: Priority
    topic: str
    payload: bytes
    retain: bool
    accepted_uptime: float
    body: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def is_json(self) -> bool:
        return self.body is not None or self.payload[:1] == b"{"
