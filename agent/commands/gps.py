"""`agent gps replay FILE [--json]`: decode a captured NMEA log the way the agent would live.

For technicians checking a receiver: one line per reporting cycle (fix update), then a summary
of good sentences, bad checksums, garbage and sentences with bad fields (checksum-valid but not
making sense: skipped or partly unknown, never fatal), so a bad cable, a wrong baud rate or a
confused receiver shows at once.
Lines starting with `#` are comments (gpsd's test logs start with a header); every other byte is
fed as captured, CR LF and NUL included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.gnss.fix import Fix, FixTracker
from agent.gnss.nmea import NmeaFramer, strip_comments

MODE_NAMES = {0: "?", 1: "no fix", 2: "2D", 3: "3D"}


def fix_record(fix: Fix) -> dict[str, Any]:
    """The replay JSON shape: time, lat, lon, mode (1/2/3), sats_used, hdop, speed (m/s), track."""
    d = fix.as_dict()
    return {k: d[k] for k in ("time", "lat", "lon", "mode", "sats_used", "hdop", "speed", "track")}


def replay(data: bytes) -> tuple[list[Fix], NmeaFramer, FixTracker]:
    framer, tracker = NmeaFramer(), FixTracker()
    fixes: list[Fix] = []
    for sentence in framer.feed(strip_comments(data)):
        fix = tracker.feed(sentence)
        if fix is not None:
            fixes.append(fix)
    framer.flush()
    last = tracker.end_cycle()
    if last is not None:
        fixes.append(last)
    return fixes, framer, tracker


def _human(fix: Fix) -> str:
    where = f"{fix.lat:11.7f} {fix.lon:12.7f}" if fix.has_position else f"{'-':>11} {'-':>12}"
    parts = [fix.time_iso() or "(no time)", f"{MODE_NAMES.get(fix.mode, '?'):>6}", where]
    if fix.sats_used is not None:
        parts.append(f"sats {fix.sats_used}")
    if fix.hdop is not None:
        parts.append(f"hdop {fix.hdop:g}")
    if fix.speed is not None:
        parts.append(f"{fix.speed:.2f} m/s")
    if fix.track is not None:
        parts.append(f"track {fix.track:g}")
    return "  ".join(parts)


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"agent: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    fixes, framer, tracker = replay(data)
    stats = framer.stats
    summary = {
        "good": stats.good,
        "bad_checksum": stats.bad_checksum,
        "no_checksum": stats.no_checksum,
        "garbage": stats.garbage,
        "garbage_bytes": stats.garbage_bytes,
        "proprietary": stats.proprietary,
        "malformed": tracker.stats.malformed,
        "fixes": len(fixes),
        "with_position": sum(1 for f in fixes if f.has_position),
    }
    out = sys.stdout
    for fix in fixes:
        out.write((json.dumps(fix_record(fix)) if args.json else _human(fix)) + "\n")
    if args.json:
        out.write(json.dumps({"summary": summary}) + "\n")
    else:
        out.write(
            f"{summary['good']} good sentences ({summary['proprietary']} proprietary, ignored), "
            f"{summary['bad_checksum']} bad checksums, {summary['no_checksum']} without checksum, "
            f"{summary['garbage']} garbage fragments ({summary['garbage_bytes']} bytes), "
            f"{summary['malformed']} with bad fields (skipped or partly unknown); "
            f"{summary['fixes']} fix updates, {summary['with_position']} with a position\n"
        )
    if stats.good == 0:
        print(f"agent: {args.file}: no valid NMEA sentence (wrong file, or a wrong baud rate when captured?)",
              file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gps", help="GNSS tools for technicians")
    gsub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    rp = gsub.add_parser(
        "replay",
        help="decode a captured NMEA log: one line per fix update, then sentence counts",
        description="Decode a captured NMEA log as the agent would live. Lines starting with # are "
        "comments. With --json: one JSON object per fix update (time, lat, lon, mode 1 none/2 2D/3 3D, "
        "sats_used, hdop, speed m/s, track) and a final {\"summary\": {...}} object. Sentences with a "
        "valid checksum but fields that make no sense are counted (malformed) and skipped.",
    )
    rp.add_argument("file", type=Path, metavar="FILE")
    rp.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    rp.set_defaults(func=cmd_replay)
