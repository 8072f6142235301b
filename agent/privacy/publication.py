"""When has the back office seen the audit log's head? When the broker acknowledged a telemetry record
that carried it.

Telemetry records carry the head (`audit: {seq, mac}`, agent.health.status). This tracker notes the
rowid of each such record as the spool commits it, and when the publisher acknowledges that rowid
(the broker's PUBACK for that very record) tells the audit log that entries up to that seq have been
published, so rotation may drop them (agent.privacy.audit). A telemetry record evicted from the
spool is never acknowledged: its head does not count, the next one will.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.privacy.audit import AuditLog
    from agent.uplink.spool import Record, Spool

PENDING_MAX = 4096  # telemetry records waiting in the spool whose heads are tracked


class HeadPublication:
    def __init__(self, audit: AuditLog, stream: str = "telemetry") -> None:
        self.audit = audit
        self.stream = stream
        self._pending: OrderedDict[int, tuple[int, str | None]] = OrderedDict()  # rowid -> head it carries
        self._lock = threading.Lock()

    def attach(self, spool: Spool) -> HeadPublication:
        spool.add_listener(self.committed)
        spool.add_ack_listener(self.acknowledged)
        return self

    def committed(self, records: list[Record]) -> None:
        for record in records:
            if record.stream != self.stream:
                continue
            head = _audit_head(record.body if record.body is not None else _parse(record.payload))
            if head is None:
                continue
            with self._lock:
                self._pending[record.rowid] = head
                while len(self._pending) > PENDING_MAX:
                    self._pending.popitem(last=False)

    def acknowledged(self, rowids: list[int]) -> None:
        with self._lock:
            heads = [self._pending.pop(r) for r in rowids if r in self._pending]
        if heads:
            self.audit.mark_published(*max(heads, key=lambda h: h[0]))


def _parse(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _audit_head(body: Any) -> tuple[int, str | None] | None:
    head = body.get("audit") if isinstance(body, dict) else None
    seq = head.get("seq") if isinstance(head, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    mac = head.get("mac") if isinstance(head, dict) else None
    return seq, mac if isinstance(mac, str) else None
