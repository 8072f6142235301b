"""The durable outbox (see spool.py): its facade and the types other stages use.

Inside: records.py (what flows through), codec.py and segments.py (the files), state.py (rebuilding
from them), index.py (what waits, in order), intake.py (the bounded queue before a commit),
policy.py (budget, eviction, TTL), tally.py (drop counts), stats.py (one description), migrate.py
(older spools)."""

from agent.uplink.spool.policy import SpoolLimits, disk_cost
from agent.uplink.spool.records import EVICTION_ORDER, Outgoing, Priority, Record
from agent.uplink.spool.segments import SpoolUnavailable
from agent.uplink.spool.spool import Spool

__all__ = [
    "EVICTION_ORDER",
    "Outgoing",
    "Priority",
    "Record",
    "Spool",
    "SpoolLimits",
    "SpoolUnavailable",
    "disk_cost",
]
