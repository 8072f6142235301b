"""Real receiver logs (../shared/data/nmea, see its SOURCE.md) against gpsd's decoded output.

For every log: the sentences the framer accepts are exactly the ones gpsd echoed in the .chk file
(checksum, framing, glued and cut sentences), and each reporting cycle gpsd reported with a time
has a fix from us with the same mode, the same position (1e-6°) and, where we report them, the
same speed and track. gpsd reports several TPVs per cycle as sentences arrive; its last one for a
time is its final word on that cycle, and that is what we compare with.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.commands.gps import replay
from agent.gnss.fix import GPS_ROLLOVER_S
from agent.gnss.nmea import NmeaFramer, strip_comments
from tests.conftest import NMEA_DIR, run_agent, shared

LOGS = [
    "bt451.log",
    "gp-320fw-2019-04-07-coldboot.log",
    "mtk-3301.log",
    "neo-m8n.log",
    "quectel-eg25-g-2.log",
    "quectel.log",
    "sirfstarv-nmea.log",
    "tcp-test.log",
    "ublox-lea-5h.log",
]


def _chk_lines(log: Path) -> list[str]:
    return (log.with_name(log.name + ".chk")).read_bytes().decode("latin-1").splitlines()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize("name", LOGS)
def test_accepted_sentences_are_exactly_those_gpsd_echoed(name: str):
    log = shared(NMEA_DIR / name)
    shared(log.with_name(name + ".chk"))
    framer = NmeaFramer()
    accepted = [s.raw for s in framer.feed(strip_comments(log.read_bytes()))]
    framer.flush()
    echoed = [line.rstrip("\r\n") for line in _chk_lines(log) if line.startswith("$")]
    assert accepted == echoed


@pytest.mark.parametrize("name", LOGS)
def test_fixes_match_gpsd_reports(name: str):
    log = shared(NMEA_DIR / name)
    shared(log.with_name(name + ".chk"))
    final: dict[str, dict] = {}  # gpsd's last TPV for each reported time
    for line in _chk_lines(log):
        if line.startswith('{"class":"TPV"'):
            tpv = json.loads(line)
            if "time" in tpv:
                final[tpv["time"]] = tpv
    assert final, "the .chk file has no timed TPV reports"
    fixes, _, _ = replay(log.read_bytes())
    ours = {}
    for fix in fixes:
        if fix.time is None:
            continue
        ours[_iso(fix.time)] = fix
        # gpsd moves receiver dates that look pre-rollover forward by 1024 GPS weeks (relative to its
        # build date, e.g. 2015 → 2034 in neo-m8n.log); we report what the receiver said
        ours.setdefault(_iso(fix.time + GPS_ROLLOVER_S), fix)
    for when, tpv in final.items():
        assert when in ours, f"gpsd reported a fix at {when}, we did not"
        fix = ours[when]
        assert fix.mode == tpv["mode"], f"{when}: mode {fix.mode}, gpsd {tpv['mode']}"
        if tpv["mode"] >= 2:
            assert fix.lat == pytest.approx(tpv["lat"], abs=1e-6), when
            assert fix.lon == pytest.approx(tpv["lon"], abs=1e-6), when
        for key in ("speed", "track"):  # gpsd also derives these from successive positions; we do not
            ours_value = getattr(fix, key)
            if ours_value is not None and key in tpv:
                assert ours_value == pytest.approx(tpv[key], abs=1e-3), f"{when}: {key}"


def test_replay_command_prints_fixes_and_counts_as_json(tmp_path: Path):
    log = shared(NMEA_DIR / "gp-320fw-2019-04-07-coldboot.log")
    res = run_agent("gps", "replay", str(log), "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in res.stdout.splitlines()]
    *fixes, summary = records
    assert set(summary) == {"summary"}
    counts = summary["summary"]
    assert counts["good"] == 91 and counts["bad_checksum"] > 0 and counts["garbage"] > 0
    assert counts["fixes"] == len(fixes) > 0
    assert set(fixes[0]) == {"time", "lat", "lon", "mode", "sats_used", "hdop", "speed", "track"}
    assert {f["mode"] for f in fixes} <= {1, 2, 3}
    assert any(f["mode"] == 3 and f["lat"] is not None for f in fixes)


def test_replay_command_table_and_errors(tmp_path: Path):
    log = shared(NMEA_DIR / "quectel.log")
    res = run_agent("gps", "replay", str(log), timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "3D" in lines[0] and "-36.74598" in lines[0]
    assert lines[-1].startswith("312 good sentences") and "0 bad checksums" in lines[-1]

    missing = run_agent("gps", "replay", str(tmp_path / "nope.log"), timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr
    assert "cannot read" in missing.stderr

    junk = tmp_path / "junk.log"
    junk.write_bytes(b"# a comment\nnot nmea at all\x00\xff\n")
    res = run_agent("gps", "replay", str(junk), timeout=60)
    assert res.returncode == 1 and "no valid NMEA sentence" in res.stderr
