"""The node's own copies of the latest thumbnails, for the status page: in memory, never on disk.

Why memory and not files: the page lists the events committed since the agent started (its list is
in memory too), so a thumbnail kept across a restart is never linked from it; and on an SD card every
file created and deleted costs an inode, a directory block and bitmaps through the file system's
journal (bench/wear.py measured about 32 kB written to the device per thumbnail for 1.3 kB of JPEG).
In memory it costs the card nothing, and an image of a passer-by is not kept at rest anywhere but in
the spool, which holds it only until the broker has it.

Bounded by count (`privacy.local_thumbnails`), by bytes (`max_bytes`; a snapshot can be a whole
frame) and by age: a thumbnail goes after `ttl_s` of spool running time, like the spool's records,
and is never served after that even between two sweeps. Age in running time is exact here: nothing
outlives the process, so a wrong wall clock has nothing to keep longer.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.events.emitter import THUMBS_STREAM
from agent.lifecycle import BackgroundLoop, resolve_deadline
from agent.uplink.spool import Record

log = logging.getLogger(__name__)

MAX_BYTES = 16 * 1024 * 1024


class LocalThumbnails:
    """Spool listener keeping the newest committed thumbnails by event id (oldest go first)."""

    name = "thumbnails"

    def __init__(
        self,
        *,
        max_files: int = 500,
        max_bytes: int = MAX_BYTES,
        ttl_s: float | None = None,
        uptime: Callable[[], float] | None = None,
        sweep_interval_s: float = 60.0,
    ) -> None:
        if ttl_s is not None and uptime is None:
            raise ValueError("a thumbnail TTL needs the spool's uptime clock")
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._uptime = uptime or (lambda: 0.0)
        self.sweep_interval_s = sweep_interval_s
        self.expired = 0
        self.pushed_out = 0  # went early to keep within max_bytes
        self._kept: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # id -> (uptime, jpeg)
        self._bytes = 0
        self._lock = threading.Lock()
        self._loop = BackgroundLoop("thumbs-expiry", self._run)

    # -- the spool listener ---------------------------------------------------------------------
    def __call__(self, records: list[Record]) -> None:
        with self._lock:
            for record in records:
                if record.stream != THUMBS_STREAM or len(record.payload) > self.max_bytes:
                    continue
                self._drop(record.id)
                self._kept[record.id] = (record.accepted_uptime, record.payload)
                self._bytes += len(record.payload)
            pushed = 0
            while self._kept and (len(self._kept) > self.max_files or self._bytes > self.max_bytes):
                if len(self._kept) <= self.max_files:
                    pushed += 1
                self._drop(next(iter(self._kept)))
            self.pushed_out += pushed
        if pushed:
            log.debug("local thumbnails: %d pushed out to stay within %d bytes", pushed, self.max_bytes)

    def _drop(self, thumb_id: str) -> None:
        kept = self._kept.pop(thumb_id, None)
        if kept is not None:
            self._bytes -= len(kept[1])

    def get(self, thumb_id: str) -> bytes | None:
        """The JPEG of event `thumb_id`, unless it is gone (bounds) or older than its TTL."""
        with self._lock:
            kept = self._kept.get(thumb_id)
        if kept is None or self._too_old(kept[0], self._uptime()):
            return None
        return kept[1]

    def _too_old(self, accepted_uptime: float, now: float) -> bool:
        return self.ttl_s is not None and now - accepted_uptime > self.ttl_s

    # -- expiry ---------------------------------------------------------------------------------
    def expire(self) -> int:
        """Forget thumbnails past their TTL; returns how many went."""
        if self.ttl_s is None:
            return 0
        now = self._uptime()
        with self._lock:
            gone = [name for name, (up, _jpeg) in self._kept.items() if self._too_old(up, now)]
            for name in gone:
                self._drop(name)
        self.expired += len(gone)
        if gone:
            log.info("expired %d local thumbnail(s) past their TTL", len(gone))
        return len(gone)

    def start(self) -> LocalThumbnails:
        """Sweep for expired thumbnails in the `thumbs-expiry` thread (only when a TTL is set)."""
        if self.ttl_s is not None and not self._loop.started:
            self._loop.start()
        return self

    def _run(self, loop: BackgroundLoop) -> None:
        while not loop.wait(self.sweep_interval_s):
            self.expire()

    def stop(self, deadline: float | None = None) -> None:
        self._loop.stop(resolve_deadline(deadline))

    def status(self) -> dict[str, Any]:
        with self._lock:
            kept, size = len(self._kept), self._bytes
        return {"kept": kept, "bytes": size, "expired": self.expired, "pushed_out": self.pushed_out}

    def __len__(self) -> int:
        return len(self._kept)


def remove_legacy_folder(folder: Path) -> int:
    """Delete `<state_dir>/thumbs`, where older agents kept thumbnails as files: nothing manages or
    expires them any more. Returns how many images went."""
    if not folder.is_dir():
        return 0
    images = sum(1 for _ in folder.glob("*.jpg"))
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        log.warning("could not remove the old thumbnail folder %s; delete it by hand", folder)
    else:
        log.info("removed %d thumbnail file(s) an older agent kept in %s (now kept in memory)", images, folder)
    return images
