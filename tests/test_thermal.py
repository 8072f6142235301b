"""Adaptive detector rate under heat: the governor's levels, its hysteresis, and the gate obeying it."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config.schema import Config, MotionConfig, ThermalConfig
from agent.detect.thermal import ThermalGovernor
from agent.motion import MotionGate


class Sensors:
    """A CPU whose temperature and firmware flags the test sets, and a clock it advances."""

    def __init__(self) -> None:
        self.temp: float | None = 50.0
        self.flags: int | None = 0
        self.now = 0.0

    def governor(self, gate: MotionGate, cfg: ThermalConfig | None = None, fps: float = 10.0) -> ThermalGovernor:
        cfg = cfg or ThermalConfig()
        return ThermalGovernor(
            lambda: cfg,
            lambda: gate,
            lambda: fps,
            read_temp=lambda: self.temp,
            read_flags=lambda: self.flags,
            clock=lambda: self.now,
            flags_every_s=0.0,
        )


def test_heat_slows_the_detector_at_once_and_cooling_speeds_it_up_step_by_step():
    cpu, gate = Sensors(), MotionGate(MotionConfig())
    gov = cpu.governor(gate, ThermalConfig(warm_c=75, hot_c=80, min_fps=1.0, resume_margin_c=5, hold_s=60))
    assert gov.poll() == "normal" and gate.max_detect_fps is None
    cpu.temp = 76.0
    assert gov.poll() == "warm" and gate.max_detect_fps == 5.0  # half the 10 fps capture rate
    cpu.temp, cpu.now = 84.0, 1.0
    assert gov.poll() == "hot" and gate.max_detect_fps == 1.0
    cpu.temp, cpu.now = 77.0, 30.0  # cooler, but within the hold time and the margin
    assert gov.poll() == "hot"
    cpu.now = 100.0  # held long enough, but 77 °C is not 5 °C below 80 °C yet
    assert gov.poll() == "hot"
    cpu.temp = 74.0
    assert gov.poll() == "warm" and gate.max_detect_fps == 5.0  # one step only
    cpu.temp, cpu.now = 60.0, 120.0
    assert gov.poll() == "warm"  # the hold applies to every step
    cpu.now = 200.0
    assert gov.poll() == "normal" and gate.max_detect_fps is None
    status = gov.status()
    assert status["state"] == "normal" and status["changes"] == 4 and status["temp_c"] == 60.0


def test_firmware_flags_count_even_when_the_temperature_is_unknown():
    cpu, gate = Sensors(), MotionGate(MotionConfig())
    cpu.temp = None
    gov = cpu.governor(gate)
    cpu.flags = 0x2  # arm_frequency_capped now
    assert gov.poll() == "warm"
    cpu.flags = 0x4 | 0x40000  # throttled now (and throttled at some point since boot)
    assert gov.poll() == "hot"
    assert gov.status()["throttled"] == ["throttled"]  # history bits are reported by telemetry, not here
    cpu.flags, cpu.now = 0x40000, 1000.0
    assert gov.poll() == "warm"


def test_no_sensors_or_disabled_means_no_cap():
    cpu, gate = Sensors(), MotionGate(MotionConfig())
    cpu.temp, cpu.flags = None, None
    assert cpu.governor(gate).poll() == "normal" and gate.max_detect_fps is None
    cpu.temp = 95.0
    off = cpu.governor(gate, ThermalConfig(enabled=False))
    assert off.poll() == "normal" and gate.max_detect_fps is None


def test_a_capped_gate_runs_the_detector_at_most_at_the_cap_in_stream_time():
    gate = MotionGate(MotionConfig(enabled=False))  # would run on every frame
    image = np.zeros((90, 160, 3), np.uint8)
    runs = [gate.decide(image, i / 10.0, 0)[0] for i in range(50)]  # 5 s at 10 fps
    assert all(runs)
    gate.max_detect_fps = 2.0
    runs = [gate.decide(image, 5.0 + i / 10.0, 0)[0] for i in range(50)]
    assert sum(runs) == 10 and runs[4::5] == [True] * 10  # every 0.5 s after the run at t=4.9
    assert gate.stats.capped == 40
    gate.max_detect_fps = None
    assert gate.decide(image, 10.0, 0)[0]


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="hot_c"):
        Config.model_validate({"detect": {"thermal": {"warm_c": 85, "hot_c": 80}}})


def test_a_running_agent_slows_its_detector_when_hot_and_reports_it(tmp_path):
    from tests.agent_harness import AgentHarness

    with AgentHarness(tmp_path / "state") as h:
        running = h.agent.running
        assert running is not None
        governor = running.services.thermal
        health = running.services.health
        governor.read_temp, governor.read_flags = (lambda: 83.0), (lambda: 0x4)  # a Pi in the sun
        governor.flags_every_s = 0.0
        assert governor.poll() == "hot"
        cap = running.pipeline.gate.max_detect_fps
        assert cap == governor.status()["detect_fps_cap"] == 1.0
        seq = 0

        def settled() -> bool:  # the governor's own thread may have sampled the old sensors once more
            governor.poll()
            status = governor.status()
            return running.pipeline.gate.stats.capped >= 5 and status["state"] == "hot" and status["throttled"] == [
                "throttled"
            ]

        for _ in range(100):  # frames keep flowing; over the cap they skip the detector, never the tracker
            tapped = health.tap.wait_newer(seq, 5.0)
            assert tapped is not None
            seq = tapped.seq
            if settled():
                break
        assert settled()
        report = health.collector.full()["stages"]["thermal"]
        assert report["state"] == "hot" and report["throttled"] == ["throttled"] and report["capped_frames"] >= 5
