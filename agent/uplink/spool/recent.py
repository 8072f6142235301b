"""The newest committed records, kept in memory so the publisher need not read them back.

On a node that keeps up, the publisher asks for each record a moment after the committer wrote it;
reading it back costs a `pread`, a CRC check and a decode per record (half of the publisher's own
CPU while a backlog drains, bench/uplink.py). What the committer just wrote is kept here instead, up
to `max_bytes` of payload, newest first; older records, and everything after a restart, come from
disk and are checked there. A record leaves when it is acknowledged or dropped, or when newer ones
push it out. The store calls this under its lock; it has none of its own.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable

from agent.uplink.spool.records import Record

DEFAULT_MAX_BYTES = 4 * 1024 * 1024


class RecentRecords:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._records: OrderedDict[int, Record] = OrderedDict()  # rowid -> record, oldest first
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, records: Iterable[Record]) -> None:
        """Keep these just-committed records (as a read from disk would return them: no `body`)."""
        for record in records:
            size = len(record.payload)
            if size > self.max_bytes:
                continue
            self._records[record.rowid] = dataclasses.replace(record, body=None)
            self._bytes += size
        while self._bytes > self.max_bytes:
            _, oldest = self._records.popitem(last=False)
            self._bytes -= len(oldest.payload)

    def get(self, rowid: int) -> Record | None:
        record = self._records.get(rowid)
        if record is None:
            self.misses += 1
        else:
            self.hits += 1
        return record

    def discard(self, rowids: Iterable[int]) -> None:
        for rowid in rowids:
            record = self._records.pop(rowid, None)
            if record is not None:
                self._bytes -= len(record.payload)

    def clear(self) -> None:
        self._records.clear()
        self._bytes = 0
