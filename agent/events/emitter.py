"""Hands events (and their thumbnails) to the spool, and the local output fed from its commits (the
local thumbnails are in local_thumbs.py)."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import IO, Any

from agent.events.thumbs import Thumbnail
from agent.events.types import EventBody
from agent.events.wire import Revision, for_wire
from agent.uplink.spool import Outgoing, Priority, Record, Spool

log = logging.getLogger(__name__)

EVENTS_STREAM = "events"
THUMBS_STREAM = "thumbs"


class EventEmitter:
    """Offers an event and its thumbnail to the spool as one group (committed together), in the
    configured revision of the record (`events.schema_revision`, agent.events.wire)."""

    def __init__(self, spool: Spool, revision: Revision = "1.1") -> None:
        self.spool = spool
        self.revision = revision
        self.emitted = 0

    def emit(self, body: EventBody, thumb: Thumbnail | None = None) -> bool:
        critical = body.get("priority") == "critical"
        if thumb is not None:
            body = body.copy()  # the caller's body stays as it was; `thumb` keeps its place
            body["thumb"] = thumb.meta()
        record = for_wire(body, self.revision)
        group = [Outgoing(EVENTS_STREAM, Priority.CRITICAL if critical else Priority.EVENT, "events", record)]
        if thumb is not None:
            group.append(Outgoing(THUMBS_STREAM, Priority.THUMB, "thumbs/{id}", thumb.jpeg, sequenced=False))
        accepted = self.spool.accept(group)
        if accepted:
            self.emitted += 1
        return accepted


class JsonLinesOutput:
    """Writes each committed event as one JSON line (stdout or a file): the simulate-mode console."""

    def __init__(self, stream: IO[str] | None = None, path: Path | None = None) -> None:
        self._path = path
        self._fh: IO[str] | None = None
        self._stream = stream if stream is not None else (None if path else sys.stdout)
        self._lock = threading.Lock()
        self.lines = 0

    def __call__(self, records: list[Record]) -> None:
        lines = [r.payload.decode() for r in records if r.stream == EVENTS_STREAM]
        if not lines:
            return
        with self._lock:
            out = self._output()
            out.write("\n".join(lines) + "\n")
            out.flush()
            self.lines += len(lines)

    def _output(self) -> IO[str]:
        if self._stream is not None:
            return self._stream
        if self._fh is None:
            assert self._path is not None
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self._path.open("a", encoding="utf-8")
        return self._fh

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def start(self) -> JsonLinesOutput:
        return self  # the file is opened with the first line

    def stop(self, deadline: float | None = None) -> None:
        """A stage of the agent: closed with the others (never blocks)."""
        self.close()

    def status(self) -> dict[str, Any]:
        return {"path": str(self._path) if self._path else None, "lines": self.lines}
