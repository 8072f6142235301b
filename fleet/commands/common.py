"""Options and formatting the commands share."""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.errors import FleetError
from fleet.store.db import Database, DbUrl

DB_ENV = "VIGIL_FLEET_DB"


def default_db_url() -> str:
    """$VIGIL_FLEET_DB, else an SQLite file in the per-user data directory (like the agent's state)."""
    if os.environ.get(DB_ENV):
        return os.environ[DB_ENV]
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'vigil' / 'fleet.db'}"


def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        metavar="URL",
        default=None,
        help=f"sqlite:///PATH (default ${DB_ENV} or ~/.local/share/vigil/fleet.db) or postgresql://USER@HOST/DB",
    )


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def db_url(args: argparse.Namespace) -> DbUrl:
    return DbUrl.parse(args.db or default_db_url())


def open_db(args: argparse.Namespace, *, create: bool = False) -> Database:
    """The database for a command; the read-only commands refuse a database the ingest never wrote."""
    url = db_url(args)
    if not create and url.kind == "sqlite" and not Path(url.target).expanduser().exists():
        raise FleetError(
            f"no fleet database at {url.target} (start `vigil-fleet ingest` first, or give --db)"
        )
    return Database.open(url, create=create)


def parse_since(text: str) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) to epoch seconds."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FleetError(f"--since {text!r} is not an ISO time, e.g. 2026-05-01T10:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(epoch: float | None, now: float | None = None) -> str:
    """'12s', '5m', '3h', '2d' or '-'."""
    if epoch is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return ago(0.0, seconds)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    """`90`, `90s`, `15m`, `2h` or `1d` to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    factor = units.get(text[-1:])
    number = text[:-1] if factor else text
    try:
        value = float(number) * (factor or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m or 2h") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value
