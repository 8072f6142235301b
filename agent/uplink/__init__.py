"""Everything that leaves the node: the durable spool and the publishers that drain it."""

from agent.uplink.spool import Outgoing, Priority, Record, Spool, SpoolLimits

__all__ = ["Outgoing", "Priority", "Record", "Spool", "SpoolLimits"]
