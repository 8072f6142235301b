"""Rebuilding the spool's state from its segments: which records still wait, where they are, the seq
counters, the drop tally, metadata and uptime. Used when the agent starts and, read-only, by
`agent spool stats` on a spool another process is writing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agent.uplink.spool import codec
from agent.uplink.spool.index import Live, LiveIndex
from agent.uplink.spool.records import Priority
from agent.uplink.spool.tally import DropTally

log = logging.getLogger(__name__)


@dataclass
class SpoolState:
    index: LiveIndex = field(default_factory=LiveIndex)
    tally: DropTally = field(default_factory=DropTally)
    seq: dict[str, int] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    uptime: float = 0.0
    next_rowid: int = 1
    commits: int = 0
    created_wall: float | None = None

    def snapshot(self) -> dict[str, Any]:
        """The body of a STATE entry: everything a restart needs that records do not carry."""
        return {
            "seq": dict(self.seq),
            "meta": dict(self.meta),
            "uptime": self.uptime,
            "next_rowid": self.next_rowid,
            "commits": self.commits,
            "drops": self.tally.snapshot(),
            "created_wall": self.created_wall,
        }


def replay(groups: list[tuple[int, list[list[codec.Entry]]]]) -> SpoolState:
    """Apply every committed group, oldest segment first."""
    state = SpoolState()
    index, tally = state.index, state.tally
    for segment, segment_groups in groups:
        for group in segment_groups:
            for entry in group:
                kind, body = entry.kind, entry.body
                if kind == codec.RECORD:
                    fields = codec.decode_record(body)
                    priority = Priority(fields.priority)
                    index.add(
                        Live(
                            fields.rowid,
                            priority,
                            fields.accepted_uptime,
                            fields.accepted_wall,
                            fields.trusted,
                            segment,
                            entry.offset,
                            entry.length,
                            len(body) - fields.payload_at,
                        )
                    )
                    if fields.seq is not None:
                        state.seq[fields.stream] = max(state.seq.get(fields.stream, 0), fields.seq)
                    state.next_rowid = max(state.next_rowid, fields.rowid + 1)
                    state.uptime = max(state.uptime, fields.accepted_uptime)
                elif kind == codec.ACK:
                    for rowid in codec.decode_acks(body):
                        index.remove(rowid)
                elif kind == codec.DROP:
                    for dropped in codec.decode_drops(body):
                        if dropped.rowid:
                            index.remove(dropped.rowid)
                        tally.add(Priority(dropped.priority), dropped.reason, dropped.size, saved=True)
                elif kind == codec.CLOCK:
                    state.uptime = max(state.uptime, codec.decode_clock(body))
                elif kind == codec.META:
                    state.meta.update(codec.decode_json(body))
                elif kind == codec.STATE:
                    _apply_snapshot(state, codec.decode_json(body))
                elif kind == codec.COMMIT:
                    pass
                else:
                    log.warning("spool: unknown entry kind %r skipped", kind)
            state.commits += 1
    return state


def _apply_snapshot(state: SpoolState, snap: dict[str, Any]) -> None:
    """A STATE entry is cumulative: counters, tallies and metadata as they were when it was written."""
    for stream, seq in (snap.get("seq") or {}).items():
        state.seq[str(stream)] = max(state.seq.get(str(stream), 0), int(seq))
    state.meta = {str(k): str(v) for k, v in (snap.get("meta") or {}).items()}
    state.uptime = max(state.uptime, float(snap.get("uptime") or 0.0))
    state.next_rowid = max(state.next_rowid, int(snap.get("next_rowid") or 1))
    state.tally.restore(list(snap.get("drops") or []))
    if snap.get("created_wall") is not None:
        state.created_wall = float(snap["created_wall"])
