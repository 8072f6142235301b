"""One database connection for one thread: SQLite (embedded, the default) or PostgreSQL, behind the
same few methods, with SQL written once (`?` placeholders, portable upserts).

Why these settings: the ingest acknowledges a message to the broker only after its transaction has
committed, so a commit must be durable when it returns. SQLite runs in WAL mode with
`synchronous=FULL` (NORMAL may roll back the last commits on power loss: FIELD-NOTES) and takes the
write lock up front (`BEGIN IMMEDIATE`) so two ingest processes never deadlock on a lock upgrade.
PostgreSQL keeps its defaults (`synchronous_commit = on`; turning it off would break the promise).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from fleet.errors import FleetError

Params = Sequence[Any]
Row = tuple[Any, ...]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True)
class DbUrl:
    """`sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or `postgresql://…` (libpq URI)."""

    kind: str  # "sqlite" or "postgresql"
    target: str  # the file path, or the libpq URI

    @classmethod
    def parse(cls, url: str) -> DbUrl:
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :]
            if not path:
                raise FleetError(
                    f"--db {url!r}: give a file, e.g. sqlite:///fleet.db or sqlite:////var/lib/fleet.db"
                )
            return cls("sqlite", path)
        scheme = urlsplit(url).scheme
        if scheme in ("postgresql", "postgres"):
            return cls("postgresql", url)
        raise FleetError(f"--db {url!r} must start with sqlite:/// or postgresql://")

    def display(self) -> str:
        """The URL without its password, for logs and pages."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.target}"
        parts = urlsplit(self.target)
        if parts.password is None:
            return self.target
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))


class Database:
    """A connection with `tx()` (one read-write transaction) and `read()` (a consistent snapshot)."""

    kind: str

    def __init__(self, url: DbUrl) -> None:
        self.url = url

    @staticmethod
    def open(url: str | DbUrl, *, create: bool = True) -> Database:
        parsed = url if isinstance(url, DbUrl) else DbUrl.parse(url)
        db: Database = SqliteDatabase(parsed) if parsed.kind == "sqlite" else PostgresDatabase(parsed)
        from fleet.store.schema import ensure_schema

        try:
            ensure_schema(db, create=create)
        except Exception:
            db.close()
            raise
        return db

    # -- implemented per backend ------------------------------------------------------------------
    def execute(self, sql: str, params: Params = ()) -> Cursor:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        """One statement for many rows (PostgreSQL: pipelined, one round trip rather than one per row)."""
        raise NotImplementedError

    def tx(self) -> contextlib.AbstractContextManager[Database]:
        """One read-write transaction: committed when the block ends, rolled back if it raises."""
        raise NotImplementedError

    def read(self) -> contextlib.AbstractContextManager[Database]:
        """One consistent snapshot for several queries."""
        raise NotImplementedError

    def retryable(self, exc: BaseException) -> bool:
        """A failure that a new attempt (after a reconnect) may not meet: lock, deadlock, lost server."""
        raise NotImplementedError

    def reconnect(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- shared helpers -----------------------------------------------------------------------------
    def one(self, sql: str, params: Params = ()) -> Row | None:
        row = self.execute(sql, params).fetchone()
        return tuple(row) if row is not None else None

    def all(self, sql: str, params: Params = ()) -> list[Row]:
        return [tuple(r) for r in self.execute(sql, params).fetchall()]

    def scalar(self, sql: str, params: Params = ()) -> Any:
        row = self.one(sql, params)
        return row[0] if row is not None else None

    @staticmethod
    def marks(count: int) -> str:
        """`?, ?, ?` for an IN list."""
        return ", ".join("?" * count)


class SqliteDatabase(Database):
    kind = "sqlite"

    def __init__(self, url: DbUrl) -> None:
        super().__init__(url)
        self.path = Path(url.target).expanduser()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one thread at a time uses a Database (the ingest hands it to its writer thread)
            conn = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
        except (OSError, sqlite3.Error) as exc:
            raise FleetError(f"cannot open the database {self.path}: {exc}") from None
        return conn

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        return self._conn.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            self._conn.executemany(sql, [tuple(r) for r in rows])

    @contextlib.contextmanager
    def tx(self) -> Iterator[Database]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[Database]:
        self._conn.execute("BEGIN")
        try:
            yield self
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("COMMIT")

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError)  # locked, busy, disk I/O: try again later

    def reconnect(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = self._connect()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


class PostgresDatabase(Database):
    kind = "postgresql"

    def __init__(self, url: DbUrl) -> None:
        super().__init__(url)
        try:
            import psycopg
        except ImportError:
            raise FleetError(
                "PostgreSQL needs psycopg: install the fleet extra (pip install 'vigil-agent[fleet]')"
            ) from None
        self._psycopg = psycopg
        self._sql: dict[str, str] = {}
        self._conn = self._connect()

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self.url.target, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise FleetError(f"cannot connect to {self.url.display()}: {str(exc).strip()}") from None

    def _translate(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            found = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return found

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(self._translate(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Sequence[Params]) -> None:
        if rows:
            with self._conn.cursor() as cursor:
                cursor.executemany(self._translate(sql), [tuple(r) for r in rows])

    @contextlib.contextmanager
    def tx(self) -> Iterator[Database]:
        with self._conn.transaction():
            yield self

    @contextlib.contextmanager
    def read(self) -> Iterator[Database]:
        with self._conn.transaction():
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield self

    def retryable(self, exc: BaseException) -> bool:
        errors = self._psycopg.errors
        return isinstance(
            exc,
            errors.SerializationFailure | errors.DeadlockDetected | self._psycopg.OperationalError,
        )

    def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = self._connect()  # FleetError while the server is down: the caller backs off and retries

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
