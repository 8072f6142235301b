"""Hands events (and their thumbnails) to the spool, and the local outputs fed from its commits."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from agent.events.thumbs import Thumbnail
from agent.uplink.spool import Outgoing, Priority, Record, Spool

log = logging.getLogger(__name__)

EVENTS_STREAM = "events"
THUMBS_STREAM = "thumbs"


class EventEmitter:
    """Offers an event and its thumbnail to the spool as one group (committed together)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.emitted = 0

    def emit(self, body: dict[str, Any], thumb: Thumbnail | None = None) -> bool:
        critical = body.get("priority") == "critical"
        if thumb is not None:
            body = {**body, "thumb": thumb.meta()}
        group = [Outgoing(EVENTS_STREAM, Priority.CRITICAL if critical else Priority.EVENT, "events", body)]
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


class ThumbnailFiles:
    """Keeps committed thumbnails as files under <state_dir>/thumbs, bounded in count.

    These are for the local status page and for a technician; they expire like any other data
    (see agent.privacy retention) and never leave the node by themselves.
    """

    def __init__(self, folder: Path, *, max_files: int = 500) -> None:
        self.folder = folder
        self.max_files = max_files
        self.folder.mkdir(parents=True, exist_ok=True)
        self._names: list[Path] = sorted(self.folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)

    def __call__(self, records: list[Record]) -> None:
        for record in records:
            if record.stream != THUMBS_STREAM:
                continue
            target = self.folder / f"{record.id}.jpg"
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(record.payload)
            os.replace(tmp, target)
            self._names.append(target)
        while len(self._names) > self.max_files:
            old = self._names.pop(0)
            old.unlink(missing_ok=True)
