"""Hands events (and their thumbnails) to the spool, and the local outputs fed from its commits."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent.clock import PLAUSIBLE_AFTER
from agent.events.thumbs import Thumbnail
from agent.events.types import EventBody
from agent.events.wire import Revision, for_wire
from agent.lifecycle import BackgroundLoop, resolve_deadline
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


class ThumbnailFiles:
    """Keeps committed thumbnails as files under <state_dir>/thumbs, bounded in count and age.

    These are for the local status page and for a technician; they never leave the node by
    themselves, and they expire like the spool's records even when they were never sent. Age is
    measured like the spool measures it (field notes: a Pi's wall clock may be 1970 or jump):
    in spool uptime, recorded per file in an append-only index (`index.jsonl`), and additionally by
    file time when the wall clock is trusted now and the file time is plausible, so a wrong clock
    can only make a thumbnail go sooner, never keep it longer than its TTL of running time.
    """

    INDEX = "index.jsonl"

    def __init__(
        self,
        folder: Path,
        *,
        max_files: int = 500,
        ttl_s: float | None = None,
        uptime: Callable[[], float] | None = None,
        clock_trusted: Callable[[], bool] = lambda: False,
        sweep_interval_s: float = 60.0,
    ) -> None:
        if ttl_s is not None and uptime is None:
            raise ValueError("a thumbnail TTL needs the spool's uptime clock")
        self.folder = folder
        self.max_files = max_files
        self.ttl_s = ttl_s
        self._uptime = uptime or (lambda: 0.0)
        self._clock_trusted = clock_trusted
        self.sweep_interval_s = sweep_interval_s
        self.expired = 0
        self._lock = threading.Lock()
        self._loop = BackgroundLoop("thumbs-expiry", self._run)
        self._stop = self._loop.stopping
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ages: dict[str, float] = self._load()  # id -> spool uptime when written, oldest first
        self._index_lines = len(self._ages)
        self._compact()
        self._trim()

    # -- index ----------------------------------------------------------------------------------
    def _load(self) -> dict[str, float]:
        known: dict[str, float] = {}
        index = self.folder / self.INDEX
        if index.exists():
            for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    item = json.loads(line)
                    known[str(item["id"])] = float(item["up"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a power cut
        now = self._uptime()
        files = sorted(self.folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        # files the index does not know (written before an index existed): their age starts now
        ages = {p.stem: known.get(p.stem, now) for p in files}
        return dict(sorted(ages.items(), key=lambda kv: kv[1]))

    def _compact(self) -> None:
        index = self.folder / self.INDEX
        tmp = index.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"id": k, "up": v}) + "\n" for k, v in self._ages.items()))
        os.replace(tmp, index)
        self._index_lines = len(self._ages)

    # -- the spool listener ---------------------------------------------------------------------
    def __call__(self, records: list[Record]) -> None:
        lines = []
        with self._lock:
            for record in records:
                if record.stream != THUMBS_STREAM:
                    continue
                target = self.folder / f"{record.id}.jpg"
                tmp = target.with_suffix(".tmp")
                tmp.write_bytes(record.payload)
                os.replace(tmp, target)
                self._ages[record.id] = record.accepted_uptime
                lines.append(json.dumps({"id": record.id, "up": record.accepted_uptime}) + "\n")
            if lines:
                with (self.folder / self.INDEX).open("a", encoding="utf-8") as fh:
                    fh.write("".join(lines))
                self._index_lines += len(lines)
            self._trim()

    def _trim(self) -> None:
        removed = False
        while len(self._ages) > self.max_files:
            oldest = next(iter(self._ages))
            del self._ages[oldest]
            (self.folder / f"{oldest}.jpg").unlink(missing_ok=True)
            removed = True
        if removed and self._index_lines > 2 * self.max_files + 64:
            self._compact()

    # -- expiry ---------------------------------------------------------------------------------
    def expire(self) -> int:
        """Delete thumbnails past their TTL; returns how many went."""
        if self.ttl_s is None:
            return 0
        now_up, now_wall = self._uptime(), time.time()
        wall_ok = bool(self._clock_trusted())
        gone = []
        with self._lock:
            for name, up in list(self._ages.items()):
                path = self.folder / f"{name}.jpg"
                old = now_up - up > self.ttl_s
                if not old and wall_ok:
                    try:
                        mtime = path.stat().st_mtime
                    except FileNotFoundError:
                        mtime = None
                    old = mtime is None or (mtime >= PLAUSIBLE_AFTER and now_wall - mtime > self.ttl_s)
                if old:
                    del self._ages[name]
                    path.unlink(missing_ok=True)
                    gone.append(name)
            if gone:
                self._compact()
        self.expired += len(gone)
        if gone:
            log.info("expired %d local thumbnail(s) past their TTL", len(gone))
        return len(gone)

    def start(self) -> ThumbnailFiles:
        """Sweep for expired thumbnails in the `thumbs-expiry` thread (only when a TTL is set)."""
        if self.ttl_s is not None and not self._loop.started:
            self._loop.start()
        return self

    def _run(self, _loop: BackgroundLoop) -> None:
        while True:
            try:
                self.expire()
            except OSError:
                log.exception("thumbnail expiry failed; retrying later")
            if self._stop.wait(self.sweep_interval_s):
                return

    def stop(self, deadline: float | None = None) -> None:
        self._loop.stop(resolve_deadline(deadline))

    def status(self) -> dict[str, Any]:
        return {"files": len(self._ages), "expired": self.expired}

    def __len__(self) -> int:
        return len(self._ages)
