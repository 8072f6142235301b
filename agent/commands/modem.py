"""`agent modem status [--port URL]`: one screen of modem, SIM, registration, signal and GNSS.

Read-only: it identifies the modem and reads its state without entering a PIN, changing the APN
or resetting anything, so it is safe next to a running agent. If ModemManager owns the port it does
not touch the port at all; it says so, shows ModemManager's own view, and how to hand the port over.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from agent.config import load_config


def _line(label: str, text: str) -> str:
    return f"{label:<10} {text}"


def render(status: dict[str, Any], gnss: dict[str, Any] | None) -> str:
    """The one-screen view of a survey (status() shape of the supervisor)."""
    out = []
    m = status.get("modem") or {}
    ident = " ".join(x for x in (m.get("manufacturer"), m.get("model")) if x) or "unknown"
    extra = []
    if m.get("firmware"):
        extra.append(f"firmware {m['firmware']}")
    if m.get("imei"):
        extra.append(f"IMEI {m['imei']}")
    if m.get("vendor"):
        extra.append(f"support: {m['vendor']}")
    out.append(_line("Modem", "  ".join([ident, *extra])))
    counters = status.get("counters") or {}
    out.append(_line("Port", f"{status.get('port')}  ({counters.get('commands', 0)} commands)"))
    sim = status.get("sim") or {}
    sim_text = sim.get("state") or "unknown"
    if sim.get("iccid"):
        sim_text += f"  ICCID {sim['iccid']}"
    out.append(_line("SIM", sim_text))
    reg = status.get("registration") or {}
    net = [reg.get("state") or "unknown"]
    if status.get("technology"):
        net.append(status["technology"])
    if status.get("operator"):
        net.append(f'"{status["operator"]}"')
    if reg.get("area"):
        net.append(f"area {reg['area']}")
    if reg.get("cell"):
        net.append(f"cell {reg['cell']}")
    if status.get("attached") is not None:
        net.append("attached" if status["attached"] else "not attached")
    out.append(_line("Network", "  ".join(net)))
    sig = status.get("signal") or {}
    parts = []
    if sig.get("rssi_dbm") is not None:
        parts.append(f"RSSI {sig['rssi_dbm']:g} dBm" + (f" (CSQ {sig['csq']})" if sig.get("csq") is not None else ""))
    for key, label, unit in (("rsrp_dbm", "RSRP", "dBm"), ("rsrq_db", "RSRQ", "dB"), ("sinr_db", "SINR", "dB")):
        if sig.get(key) is not None:
            parts.append(f"{label} {sig[key]:g} {unit}")
    out.append(_line("Signal", "  ".join(parts) or "unknown"))
    if status.get("apn") is not None:
        out.append(_line("APN", status["apn"] or "(empty)"))
    engine = status.get("gnss_enabled")
    gnss_text = "engine on" if engine is True else "engine off" if engine is False else "engine state unknown"
    if gnss is not None:
        fix = gnss.get("fix")
        if fix and fix.get("mode", 0) >= 2:
            gnss_text += (
                f"; {fix['mode']}D fix {fix['lat']:.7f}, {fix['lon']:.7f}"
                + (f"  sats {fix['sats_used']}" if fix.get("sats_used") is not None else "")
                + (f"  hdop {fix['hdop']:g}" if fix.get("hdop") is not None else "")
                + (f"  {fix['time']}" if fix.get("time") else "")
            )
        elif fix:
            gnss_text += "; no fix yet"
        else:
            gnss_text += f"; no NMEA on {gnss.get('port')}" + (f" ({gnss['message']})" if gnss.get("message") else "")
    out.append(_line("GNSS", gnss_text))
    link = status.get("state", "unknown") + (f" ({status['message']})" if status.get("message") else "")
    out.append(_line("Link", link))
    return "\n".join(out)


def render_modemmanager(status: dict[str, Any]) -> str:
    view = status.get("modemmanager") or {}
    out = [status.get("message", "")]
    if view:
        out.append("ModemManager reports (read-only):")
        ident = " ".join(x for x in (view.get("manufacturer"), view.get("model")) if x)
        out.append(_line("Modem", ident or "unknown"))
        out.append(_line("Network", "  ".join(str(x) for x in (view.get("registration"), view.get("technology"),
                                                                 view.get("operator")) if x) or "unknown"))
        if view.get("signal_percent") is not None:
            out.append(_line("Signal", f"{view['signal_percent']}%"))
        out.append(_line("State", str(view.get("state"))))
    return "\n".join(out)


def _gnss_look(port: str, baudrate: int, seconds: float) -> dict[str, Any]:
    from agent.gnss.reader import GnssReader
    from agent.modem.at import open_port

    reader = GnssReader(lambda: open_port(port, baudrate), port_label=port, reopen_max_s=1.0)
    reader.start()
    try:
        reader.wait_for(lambda fix: fix.has_position, seconds)
    finally:
        reader.stop()
    return reader.status()


def cmd_status(args: argparse.Namespace) -> int:
    from agent.cli import setup_logging
    from agent.modem.supervisor import LinkSupervisor

    setup_logging(args.verbose, "critical")  # the screen says it all; -v shows the AT conversation
    cfg = load_config(args.config).config
    port = args.port or cfg.modem.port
    if not port:
        print("agent: no modem port: pass --port (e.g. /dev/ttyUSB2) or set modem.port", file=sys.stderr)
        return 2
    settings = cfg.modem.model_copy(
        update={
            "port": port,
            "mode": "monitor",
            "baudrate": args.baudrate or cfg.modem.baudrate,
            "command_timeout_s": args.timeout,
            "unresponsive_after": 1,
        }
    )
    started = time.monotonic()
    status = LinkSupervisor(settings).survey()
    gnss = None
    gnss_port = args.gnss_port or cfg.gnss.port
    if status["state"] not in ("absent", "modemmanager") and gnss_port:
        gnss = _gnss_look(gnss_port, cfg.gnss.baudrate, args.gnss_seconds)
    if args.json:
        print(json.dumps({"link": status, "gnss": gnss}, indent=2, default=str))
    elif status["state"] == "modemmanager":
        print(render_modemmanager(status))
    elif status["state"] not in ("absent", "no_response"):
        print(render(status, gnss))
    state = status["state"]
    if state == "absent":
        print(f"agent: {status.get('message') or f'cannot open {port}'}", file=sys.stderr)
        return 1
    if state == "no_response":
        print(
            f"agent: {port} opened but the modem did not answer AT within {time.monotonic() - started:.0f}s "
            "(wrong port? the AT port is usually the third USB serial interface; or the modem is hung)",
            file=sys.stderr,
        )
        return 1
    if state == "modemmanager" and not status.get("modemmanager"):
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("modem", help="LTE modem tools for technicians")
    msub = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    st = msub.add_parser(
        "status",
        help="one screen of modem, SIM, registration, signal and GNSS (read-only)",
        description="Identify the modem and show SIM, registration, operator, signal, attach and GNSS. "
        "Read-only: no PIN entry, no APN change, no reset. Exit 1 when the port cannot be opened or the "
        "modem does not answer.",
    )
    st.add_argument("--port", metavar="URL", help="AT port (default: modem.port from the config)")
    st.add_argument("--baudrate", type=int, metavar="N", help="AT port baud rate (UART modems)")
    st.add_argument("--gnss-port", metavar="URL", help="also read NMEA here (default: gnss.port)")
    st.add_argument("--gnss-seconds", type=float, default=3.0, metavar="S", help="how long to wait for a fix")
    st.add_argument("--timeout", type=float, default=3.0, metavar="S", help="per-command timeout")
    st.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    st.add_argument("--json", action="store_true", help="print the full status as JSON")
    st.add_argument("-v", "--verbose", action="count", default=0, help="log the AT conversation")
    st.set_defaults(func=cmd_status)
