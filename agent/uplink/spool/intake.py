"""Records waiting for the next commit, in memory, bounded: when the disk stops keeping up, the least
important queued record is shed first (a thumbnail before its event, telemetry before anything).

Not thread-safe on its own: the spool calls it under its condition."""

from __future__ import annotations

import logging

from agent.uplink.spool.records import Outgoing, encode_json
from agent.uplink.spool.tally import DropTally

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, tally: DropTally, *, max_pending_bytes: int, max_record_bytes: int) -> None:
        self.tally = tally
        self.max_pending_bytes = max_pending_bytes
        self.max_record_bytes = max_record_bytes
        self.groups: list[list[Outgoing]] = []
        self.bytes = 0
        self.offered = 0  # groups queued so far
        self.settled = 0  # groups committed or shed (flush() waits for it to catch up)

    def refuse(self, group: list[Outgoing]) -> str | None:
        """Why this group can never be committed (checked before queueing, so the committer never chokes)."""
        for item in group:
            if not isinstance(item.body, bytes):
                try:
                    encode_json(item.body)
                except (TypeError, ValueError) as exc:
                    log.error("record for %s refused: not JSON-serialisable (%s)", item.topic, exc)
                    self._drop(item, "unencodable", 0)
                    return "unencodable"
        size = sum(o.approx_size for o in group)
        if size > self.max_record_bytes:
            log.warning("record of %d bytes refused (max %d)", size, self.max_record_bytes)
            self._drop(group[0], "too_large", size)
            return "too_large"
        return None

    def offer(self, group: list[Outgoing]) -> bool:
        """Queue a group; False when the group itself was the least important thing and was shed."""
        self.groups.append(group)
        self.bytes += sum(o.approx_size for o in group)
        self.offered += 1
        while self.bytes > self.max_pending_bytes and self._shed_one():
            pass
        return bool(self.groups) and self.groups[-1] is group

    def _shed_one(self) -> bool:
        """Drop the least important queued record (newest first among equals); False if nothing can go."""
        worst: tuple[int, int, int] | None = None  # (priority, group index, item index)
        for gi, group in enumerate(self.groups):
            for ii, item in enumerate(group):
                key = (int(item.priority), gi, ii)
                if worst is None or key > worst:
                    worst = key
        if worst is None:
            return False
        _, gi, ii = worst
        group = self.groups[gi]
        removed = group[ii:] if ii > 0 else group  # a primary takes its companions with it
        for item in removed:
            self.bytes -= item.approx_size
            self._drop(item, "queue_full", item.approx_size)
        if ii > 0:
            del group[ii:]
        else:
            del self.groups[gi]
            self.settled += 1
        return True

    def _drop(self, item: Outgoing, reason: str, size: int) -> None:
        self.tally.add(item.priority, reason, size)
        log.warning("spool dropped a %s record (%s, %d bytes)", item.priority.label, reason, size)

    def take(self) -> list[list[Outgoing]]:
        groups, self.groups, self.bytes = self.groups, [], 0
        return groups

    def put_back(self, groups: list[list[Outgoing]]) -> None:
        """Groups a failed commit did not write go back in front of anything newer."""
        self.groups[:0] = groups
        self.bytes += sum(o.approx_size for g in groups for o in g)
