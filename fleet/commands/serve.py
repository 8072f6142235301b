"""`vigil-fleet serve`: the operators' page and /metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from fleet.commands.common import add_db, db_url, open_db, seconds
from fleet.errors import FleetError
from fleet.identity import load_fleet

log = logging.getLogger("fleet.serve")
TOKEN_ENV = "VIGIL_FLEET_TOKEN"


def read_token(path: str | None) -> str | None:
    if path:
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FleetError(f"cannot read --token-file {path}: {exc}") from None
    return os.environ.get(TOKEN_ENV) or None


def cmd_serve(args: argparse.Namespace) -> int:
    fleet_dir = args.fleet or os.environ.get("VIGIL_FLEET")
    context = load_fleet(Path(fleet_dir) if fleet_dir else None, None)
    db = open_db(
        args, create=True
    )  # a clear error now if it is unreachable; the page may start before the ingest
    try:
        if not db.scalar("SELECT COUNT(*) FROM nodes"):
            log.info(
                "the database %s holds no node yet: is `vigil-fleet ingest` writing to it?", db.url.display()
            )
    finally:
        db.close()
    from fleet.web.service import FleetWeb  # the HTTP side only for this command

    web = FleetWeb(
        db_url(args),
        args.http,
        token=read_token(args.token_file),
        inventory=context.inventory,
        fleet_name=context.name or "Vigil fleet",
        tiles=args.tiles,
        attribution=args.tiles_attribution or "",
        silent_after_s=args.silent_after,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    web.start()
    token_note = "" if web.app.token is None else " (token required: open it once with ?token=<token>)"
    log.info("operators' page: %s%s", web.url, token_note)
    try:
        stop.wait()
    finally:
        web.stop()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="the operators' page: map, nodes, latest events, drill-down, /metrics")
    add_db(p)
    p.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="[ADDR:]PORT",
        help="where to serve (default 127.0.0.1:8080; another address than loopback needs a token)",
    )
    p.add_argument("--token-file", metavar="FILE", help=f"access token, 16+ characters (or ${TOKEN_ENV})")
    p.add_argument(
        "--fleet",
        metavar="DIR",
        help="fleet directory: configured positions, sites, fleet name (default $VIGIL_FLEET)",
    )
    p.add_argument(
        "--tiles",
        metavar="URL",
        help="map tile server, e.g. https://tiles.city.example/{z}/{x}/{y}.png "
        "(default: none, the map is drawn from the coordinates)",
    )
    p.add_argument("--tiles-attribution", metavar="TEXT", help="credit line the tile server asks for")
    p.add_argument(
        "--silent-after",
        type=seconds,
        default=None,
        metavar="DURATION",
        help="an online node heard nothing from for this long is shown silent (default 5m)",
    )
    p.set_defaults(func=cmd_serve)
