"""The back office's tables, written once for SQLite and PostgreSQL.

- `events`: one row per event id (the primary key is what makes storage idempotent), the record
  exactly as the node sent it in `body`, and the columns the queries need.
- `nodes`: one row per node: the seq high-water mark and counts, the latest status and telemetry,
  the position. Ingest transactions lock the rows of the nodes they touch (in name order), so
  several ingest processes keep each node's seq accounting consistent.
- `gaps`: missing seq ranges per node, with when they opened and the alarm they raised.
- `thumbs`: JPEGs by event id: `ok` (sha256 matches the event), `degraded` (re-encoded on the node and
  flagged so), `pending` (arrived before its event).
- `telemetry`, `status_history`, `replies`: per-node history, deduplicated by payload digest.
- `quarantine`: everything refused, with the reason and the payload, deduplicated by digest.
- `alarms`: opened and cleared alarms (gaps open too long, seq reuse, an audit log rewound or forked).
- `audit_heads`: every distinct audit-log head each node published (fleet/store/auditheads.py).
- `ingesters`: a heartbeat per ingest process (the page shows each one's state and lag).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.errors import FleetError

if TYPE_CHECKING:
    from fleet.store.db import Database

SCHEMA_VERSION = 1

TYPES = {
    "sqlite": {"real": "REAL", "blob": "BLOB", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"real": "DOUBLE PRECISION", "blob": "BYTEA", "serial": "BIGSERIAL PRIMARY KEY"},
}

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    first_seen {real} NOT NULL,
    last_seen {real},
    max_seq BIGINT NOT NULL DEFAULT 0,
    received BIGINT NOT NULL DEFAULT 0,
    duplicates BIGINT NOT NULL DEFAULT 0,
    last_event_at {real},
    status_state TEXT,
    status_at {real},
    status_body TEXT,
    telemetry_at {real},
    telemetry_body TEXT,
    agent_version TEXT,
    model TEXT,
    lat {real},
    lon {real},
    pos_mode TEXT,
    pos_at {real}
);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    priority TEXT NOT NULL,
    ts TEXT NOT NULL,
    ts_epoch {real},
    clock_trusted INTEGER,
    historical INTEGER NOT NULL,
    label TEXT,
    thumb_sha256 TEXT,
    received_at {real} NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_node_seq ON events (node, seq);
CREATE INDEX IF NOT EXISTS events_node_ts ON events (node, ts_epoch);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_epoch);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS thumbs (
    event_id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    state TEXT NOT NULL,
    degraded INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    jpeg {blob} NOT NULL,
    received_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    node TEXT NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq BIGINT NOT NULL,
    opened_at {real} NOT NULL,
    alarm_id BIGINT,
    PRIMARY KEY (node, from_seq)
);
CREATE TABLE IF NOT EXISTS alarms (
    id {serial},
    node TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    opened_at {real} NOT NULL,
    cleared_at {real}
);
CREATE INDEX IF NOT EXISTS alarms_node ON alarms (node, opened_at);
CREATE TABLE IF NOT EXISTS telemetry (
    node TEXT NOT NULL,
    digest TEXT NOT NULL,
    received_at {real} NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (node, digest)
);
CREATE INDEX IF NOT EXISTS telemetry_node_at ON telemetry (node, received_at);
CREATE TABLE IF NOT EXISTS status_history (
    id {serial},
    node TEXT NOT NULL,
    received_at {real} NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS status_history_node_at ON status_history (node, received_at);
CREATE TABLE IF NOT EXISTS replies (
    node TEXT NOT NULL,
    digest TEXT NOT NULL,
    request_id TEXT,
    command TEXT,
    status TEXT,
    received_at {real} NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (node, digest)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id {serial},
    digest TEXT NOT NULL UNIQUE,
    received_at {real} NOT NULL,
    topic TEXT NOT NULL,
    node TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL,
    payload {blob} NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_reason ON quarantine (reason, received_at);
CREATE TABLE IF NOT EXISTS audit_heads (
    node TEXT NOT NULL,
    aseq BIGINT NOT NULL,
    mac TEXT NOT NULL,
    first_tseq BIGINT NOT NULL,
    last_tseq BIGINT NOT NULL,
    first_at {real} NOT NULL,
    PRIMARY KEY (node, aseq, mac)
);
CREATE TABLE IF NOT EXISTS ingesters (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at {real} NOT NULL,
    heartbeat_at {real} NOT NULL,
    broker TEXT NOT NULL,
    connected INTEGER NOT NULL,
    stats TEXT NOT NULL
);
"""


def statements(kind: str) -> list[str]:
    ddl = TABLES.format(**TYPES[kind])
    return [s.strip() for s in ddl.split(";") if s.strip()]


def ensure_schema(db: Database, *, create: bool = True) -> None:
    """Create the tables when missing (idempotent, safe with several processes starting at once) and
    refuse a database written by a newer version."""
    if not create:
        found = _version(db)
        if found is None:
            raise FleetError(
                f"{db.url.display()} holds no Vigil fleet data yet (run `vigil-fleet ingest` first)"
            )
        _check(found, db)
        return
    with db.tx():
        if db.kind == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(7140514)")  # one creator at a time ("vigil" in hex-ish)
        for statement in statements(db.kind):
            db.execute(statement)
        found = _version(db)
        if found is None:
            db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        else:
            _check(found, db)


def _version(db: Database) -> int | None:
    try:
        value = db.scalar("SELECT value FROM meta WHERE key = 'schema_version'")
    except Exception:  # no meta table: an empty database
        if db.kind == "postgresql":
            db.reconnect()  # a failed statement outside a transaction leaves psycopg usable, but be sure
        return None
    return int(value) if value is not None else None


def _check(found: int, db: Database) -> None:
    if found > SCHEMA_VERSION:
        raise FleetError(
            f"{db.url.display()} was written by a newer vigil-fleet (schema {found}, this one knows "
            f"{SCHEMA_VERSION}); upgrade this installation"
        )
