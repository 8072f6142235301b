"""`vigil-fleet ingest`: the long-running consumer (systemd: Restart=always; SIGTERM stops it cleanly)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from fleet.commands.common import add_db, open_db, positive_int, seconds
from fleet.errors import FleetError
from fleet.identity import load_fleet

log = logging.getLogger("fleet.ingest")

SUMMARY_S = 60.0


def cmd_ingest(args: argparse.Namespace) -> int:
    from fleet.eventschema import EventValidator  # MQTT and the schema only for this command
    from fleet.ingest.mqtt import SessionOptions, broker_url
    from fleet.ingest.service import Ingest, IngestOptions
    from fleet.wire import WireParser

    fleet_dir = args.fleet or os.environ.get("VIGIL_FLEET")
    context = load_fleet(Path(fleet_dir) if fleet_dir else None, args.operator, args.prefix)
    urls = args.broker or ([context.broker] if context.broker else [])
    if not urls:
        raise FleetError(
            "--broker mqtt[s]://HOST:PORT is required (or --fleet DIR, whose fleet.toml names it)"
        )
    brokers = [broker_url(u) for u in urls]
    if any(b.tls for b in brokers) and context.tls is None:
        log.warning(
            "ingest: TLS without a client certificate (give --fleet DIR --operator NAME for a fleet broker)"
        )
    client_id = args.client_id or context.operator or "vigil-fleet-ingest"
    known = context.inventory.check if context.inventory is not None else None
    parser = WireParser(context.prefix, EventValidator(), known)
    session = SessionOptions(
        brokers=brokers,
        client_id=client_id,
        filters=parser.filters(),
        protocol=args.protocol,
        share=args.share,
        tls=context.tls,
        session_expiry_s=int(args.session_expiry),
        receive_maximum=args.receive_maximum,
    )
    options = IngestOptions(
        gap_alarm_s=args.gap_alarm_after, batch_max=args.batch, telemetry_days=args.telemetry_days
    )
    db = open_db(args, create=True)
    ingest = Ingest(db, parser, session, options, name=args.name or client_id)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "ingest %s: %s -> %s (topics %s/+/…; gaps alarm after %.0f s)",
        ingest.ingest_name,
        ", ".join(map(str, brokers)),
        db.url.display(),
        context.prefix,
        args.gap_alarm_after,
    )
    ingest.start()
    try:
        while not stop.wait(SUMMARY_S if not args.verbose else 10.0):
            if ingest.fatal:
                break
            s = ingest.stats
            log.info(
                "ingest: %d events stored (%d duplicates), %d thumbnails, %d other records, %d quarantined, "
                "%d alarms, queue %d",
                s.stored,
                s.duplicates,
                s.thumbs,
                s.records,
                sum(s.quarantined.values()),
                s.alarms,
                ingest.queue.qsize(),
            )
    finally:
        ingest.stop()
        db.close()
    if ingest.fatal:
        raise FleetError(ingest.fatal)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ingest",
        help="store everything the nodes publish (persistent session; acknowledged after commit)",
        description="Consume the fleet's topics with a persistent MQTT session at QoS 1 and store every "
        "event exactly once: each message is acknowledged to the broker only after the database "
        "transaction holding it has committed. Bad input is quarantined with a reason.",
    )
    p.add_argument(
        "--broker",
        action="append",
        metavar="URL",
        help="mqtt://HOST:PORT or mqtts://HOST:PORT; repeat for the nodes of a cluster (tried in turn); "
        "default: the broker in FLEET/fleet.toml",
    )
    p.add_argument(
        "--fleet", metavar="DIR", help="fleet directory from vigil-provision (default $VIGIL_FLEET)"
    )
    p.add_argument(
        "--operator", metavar="NAME", help="operator identity for mutual TLS (vigil-provision add-operator)"
    )
    add_db(p)
    p.add_argument(
        "--client-id",
        metavar="ID",
        help="MQTT client id: names the persistent session "
        "(default the operator name; Mosquitto with the generated config forces it anyway)",
    )
    p.add_argument("--name", help="name of this process on the page and in metrics (default the client id)")
    p.add_argument("--prefix", help="topic prefix (default from fleet.toml, else vigil)")
    p.add_argument(
        "--share",
        metavar="GROUP",
        help="shared subscription group: several ingest processes split "
        "the stream (MQTT 5 brokers that support it, e.g. Mosquitto, EMQX)",
    )
    p.add_argument(
        "--protocol",
        choices=("auto", "5", "3.1.1"),
        default="auto",
        help="MQTT version (auto: 5, or 3.1.1 with brokers that refuse 5, e.g. RabbitMQ 3.10)",
    )
    p.add_argument(
        "--gap-alarm-after",
        type=seconds,
        default=900.0,
        metavar="DURATION",
        help="alarm when a seq gap stays open this long (default 15m: a node draining a backlog "
        "closes its gaps within minutes)",
    )
    p.add_argument(
        "--session-expiry",
        type=seconds,
        default=14 * 86400.0,
        metavar="DURATION",
        help="how long the broker keeps this session while the ingest is away (MQTT 5; default 14d)",
    )
    p.add_argument(
        "--receive-maximum",
        type=positive_int,
        default=500,
        metavar="N",
        help="messages the broker may send unacknowledged (MQTT 5; default 500)",
    )
    p.add_argument(
        "--batch", type=positive_int, default=500, metavar="N", help="most messages per transaction"
    )
    p.add_argument(
        "--telemetry-days",
        type=float,
        default=30.0,
        metavar="DAYS",
        help="telemetry and status history kept (events are kept for ever; default 30)",
    )
    p.set_defaults(func=cmd_ingest)
