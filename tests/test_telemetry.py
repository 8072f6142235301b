"""Telemetry and the retained status, from a real agent (emulated modem and GNSS, as in `agent --simulate`)
through the spool to a real Mosquitto; and the system probe on a Pi-like /sys and `vcgencmd`."""

from __future__ import annotations

import json
import os
import stat

from agent.health.stage import disclose as disclose_telemetry
from agent.health.status import TELEMETRY_FIELDS
from agent.health.system import SystemProbe, cpu_temperature_c, decode_throttled, read_throttled
from agent.uplink.spool import Priority
from agent.uplink.stage import disclose as disclose_status
from tests.agent_harness import AgentHarness, Operator
from tests.brokers import Collector


def telemetry(operator: Operator) -> list[dict]:
    return [json.loads(m.payload) for m in operator.messages("telemetry")]


def test_telemetry_is_small_complete_and_plausible(broker, tmp_path):
    config = {"telemetry": {"interval_s": 5}, "modem": {"mode": "managed"}, "gnss": {"source": "auto"}}
    operator = Operator(broker.url)
    try:
        with AgentHarness(tmp_path / "state", broker=broker.url, config=config) as node:
            # the emulated modem registers and its GNSS gets a 3D fix within seconds; telemetry says so
            assert operator.sub.wait_for(lambda _ms: any(
                (t["modem"] or {}).get("up") and (t["gnss"] or {}).get("mode") == 3 for t in telemetry(operator)), 40)
            record = next(r for r in node.raw if r.stream == "telemetry")
            assert record.priority == Priority.TELEMETRY  # the lowest class: evicted first, sent last
        message = next(m for m in operator.messages("telemetry")
                       if (json.loads(m.payload)["gnss"] or {}).get("mode") == 3)
    finally:
        operator.close()
    assert len(message.payload) < 1500
    t = json.loads(message.payload)
    assert t["schema"] == "vigil.telemetry/1" and t["node"] == "node-1" and t["seq"] >= 1 and t["id"]
    assert 5 <= t["fps"]["capture"] <= 30 and 0 < t["fps"]["analysis"] <= 30 and t["fps"]["detect"] > 0
    assert 0 < t["inference_ms"]["p50"] <= t["inference_ms"]["p95"] < 2000
    assert t["frames"]["read"] >= t["frames"]["analysed"] > 0 and t["frames"]["dropped"] >= 0
    assert 0 <= t["motion_gate_ratio"] <= 1
    assert t["cpu"]["percent"] is not None and 0 <= t["cpu"]["percent"] <= 100 * (os.cpu_count() or 1)
    assert 20 < t["memory_rss_mb"] < 4096 and t["disk_free_mb"] > 0
    assert set(t["spool"]["classes"]) == {"critical", "event", "thumb", "telemetry"}
    assert all(c["drops"] == 0 for c in t["spool"]["classes"].values())
    assert all("oldest_age_s" in c for c in t["spool"]["classes"].values())  # the backlog's age, for the back office
    assert t["link"]["connected"] is True and t["link"]["published"] > 0
    assert t["modem"]["up"] is True and -113 <= t["modem"]["rssi_dbm"] <= -51 and t["modem"]["technology"]
    assert t["gnss"]["sats"] >= 4 and -90 <= t["gnss"]["lat"] <= 90 and -180 <= t["gnss"]["lon"] <= 180
    assert t["camera"] == {"ok": True, "stream": "ok", "tamper": t["camera"]["tamper"]}
    assert t["clock"]["source"] in ("ntp", "gnss", "system", "unsynced")
    assert t["versions"]["agent"] and len(t["versions"]["model_sha256"]) == 64 and t["versions"]["onnxruntime"]
    # the privacy report describes exactly these fields (id and seq are the spool's, on every record)
    assert set(t) - {"id", "seq", "historical"} == set(TELEMETRY_FIELDS)
    assert [f["field"] for f in disclose_telemetry(node.agent.config)[0]["fields"]] == list(TELEMETRY_FIELDS)


def test_retained_status_carries_camera_health(broker, tmp_path):
    def online(ms) -> bool:
        return any(json.loads(m.payload)["state"] == "online" for m in ms)

    early = Collector(broker.url, ["vigil/node-1/status"], client_id="early-operator")
    with AgentHarness(tmp_path / "state", broker=broker.url) as node:
        try:
            assert early.wait_for(online, 20)  # the node is connected and has said so
        finally:
            early.close()
        late = Collector(broker.url, ["vigil/node-1/status"], client_id="late-operator")
        try:  # someone subscribing afterwards gets it from the broker's retained store
            assert late.wait_for(lambda ms: bool(ms) and ms[-1].retain and online(ms), 10)
            status = json.loads(late.snapshot()[-1].payload)
        finally:
            late.close()
    assert status["state"] == "online" and status["camera"]["ok"] is True and status["model"] == "vigil-synth"
    disclosed = disclose_status(node.agent.config)[0]["fields"]
    assert set(status) == {name.split(" ")[0] for name in disclosed}  # the privacy report lists exactly these


def test_system_probe_reads_a_pi(tmp_path, monkeypatch):
    thermal = tmp_path / "thermal"
    for index, (kind, milli) in enumerate((("acpitz", "35000"), ("cpu-thermal", "71234"))):
        zone = thermal / f"thermal_zone{index}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert cpu_temperature_c(thermal) == 71.2  # the CPU zone, not the first one
    assert cpu_temperature_c(tmp_path / "nothing") is None
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vcgencmd"
    fake.write_text("#!/bin/sh\necho throttled=0x50005\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    value = read_throttled()
    assert value == 0x50005
    assert decode_throttled(value) == ["under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"]
    sample = SystemProbe(tmp_path).sample()
    assert sample["throttled"] == "0x50005" and "under_voltage" in sample["throttled_flags"]
    assert sample["rss_bytes"] > 0 and sample["disk_free_bytes"] > 0


def test_no_vcgencmd_no_throttling_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert read_throttled() is None
    assert SystemProbe(tmp_path).sample()["throttled"] is None
