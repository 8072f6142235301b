"""Storage: one schema for SQLite and PostgreSQL (`schema`), connections (`db`), the ingest's
transactions (`writer`) and the queries behind the CLI and the page (`reader`)."""

from fleet.store.db import Database, DbUrl

__all__ = ["Database", "DbUrl"]
