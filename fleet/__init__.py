"""Vigil's back office: `vigil-fleet` ingests what the nodes publish into a database, exactly once, and
shows the fleet's health (command line, operators' page, Prometheus metrics).

The nodes' wire format (topics and schema/event-v1.json) is the contract; nothing here imports the
agent's uplink. Packages: `wire` (what a message means), `store` (SQLite or PostgreSQL), `ingest`
(the MQTT consumer that acknowledges only after commit), `web` (the page) and `commands` (the CLI).
"""

from agent import __version__

__all__ = ["__version__"]
