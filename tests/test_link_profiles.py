"""The built-in link profiles (`--link-profile flaky|brownout|lte-cell-edge`): under each, the real agent
delivers every event it commits, by itself, gapless at an independent subscriber.

The profiles' steps last minutes (flaky repeats every 3 minutes), too long for the default run. The
test plays each built-in definition — the same modes, rates and latencies, in the same order — with
its durations multiplied by VIGIL_LINK_PROFILE_SCALE (default 0.1: flaky's 30 s outage lasts 3 s),
written as a profile file, which is what `--link-profile FILE` loads. The agent reconnects within a
second meanwhile (uplink.reconnect_max_s = 1): with its default backoff (1 s doubling to 120 s, reset
only after a connection that lived 60 s) no connection under lte-cell-edge ever counts as healthy, so
the backoff, not the link, would set the pace. VIGIL_LINK_PROFILE_SCALE=1 plays the built-in profiles
by name, at their real length, with the agent's default backoff.
"""

from __future__ import annotations

import math
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.uplink.link import LinkProfile, load_profile
from tests.brokers import Collector, Mosquitto
from tests.conftest import agent_env, read_events, run_agent
from tests.delivery import assert_all_delivered

SCALE = float(os.environ.get("VIGIL_LINK_PROFILE_SCALE", "0.1"))
FPS = 10.0  # --simulate plays the synthetic street in real time at this rate


def scaled_profile_file(profile: LinkProfile, scale: float, folder: Path) -> Path:
    """The profile as a TOML file with every step `scale` times as long."""
    lines = [f"repeat = {str(profile.repeat).lower()}"]
    for step in profile.steps:
        lines += ["[[step]]", f"seconds = {step.duration_s * scale:g}", f'mode = "{step.state.mode}"']
        if step.state.rate_bps:
            lines.append(f"rate_bps = {step.state.rate_bps:g}")
        if step.state.latency_s:
            lines.append(f"latency_ms = {step.state.latency_s * 1000:g}")
    path = folder / f"{profile.name}-x{scale:g}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_environment(scale: float) -> dict[str, str]:
    """Room to drain at the end (a blackhole is noticed only when PUBACKs stop coming: 30 s); a short
    reconnect backoff when the profile is time-compressed."""
    if scale >= 1:
        return agent_env(VIGIL_UPLINK__DRAIN_AT_END_S="1800")
    return agent_env(
        VIGIL_UPLINK__DRAIN_AT_END_S="180",
        VIGIL_UPLINK__RECONNECT_MIN_S="0.1",
        VIGIL_UPLINK__RECONNECT_MAX_S="1",
    )


def expected_log_lines(profile: LinkProfile) -> set[str]:
    """What the proxy logs as it enters each step (agent.uplink.link: `link: <state>`)."""
    return {f"link: {step.state.describe()}" for step in profile.steps}


PROFILES = ("flaky", "brownout", "lte-cell-edge")


def run_under(name: str, broker_url: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """One finite run of the real agent (node `sim-<name>`) behind the named built-in profile."""
    profile = load_profile(name)
    cycle = sum(step.duration_s for step in profile.steps)
    # one whole cycle of the (scaled) profile while events are produced, but at least 15 s of events
    # and at most 30 s (brownout's single step lasts an hour: its 2 kB/s is the point)
    stream_s = min(max(cycle * SCALE, 15.0), 30.0) if SCALE < 1 else min(cycle, 200.0)
    spec = name if SCALE == 1 else str(scaled_profile_file(profile, SCALE, folder))
    return run_agent(
        "--simulate", "--source", "synthetic:21", "--max-frames", str(math.ceil(stream_s * FPS)),
        "--node-id", f"sim-{name}", "--broker", broker_url, "--link-profile", spec,
        "--state-dir", str(folder / name), "--http", "off",
        env=agent_environment(SCALE), timeout=stream_s + (300 if SCALE < 1 else 2000),
    )  # fmt: skip


def check_run(name: str, res: subprocess.CompletedProcess[str], collector: Collector, folder: Path) -> None:
    assert res.returncode == 0, res.stderr[-3000:]
    assert "spool drained; exiting" in res.stderr, res.stderr[-3000:]
    marker = "agent.uplink.link: "
    played = {line.split(marker, 1)[1] for line in res.stderr.splitlines() if marker + "link: " in line}
    assert played >= expected_log_lines(load_profile(name)), (
        f"the profile was not played step by step: {played}"
    )
    assert len(read_events(res.stdout)) >= 5, "too few events to prove anything"
    # slow steps may have sent smaller thumbnails: the event still names the original
    assert_all_delivered(collector, folder / name, f"sim-{name}", exact_thumbs=False)


def test_builtin_link_profiles_deliver_every_event(tmp_path):
    """All three profiles at once, one agent (and one node id) each, to one broker: every agent ends its
    stream, delivers what it committed by itself and exits; the subscriber has every seq of every node."""
    broker = Mosquitto(tmp_path / "broker").start()
    collector = Collector(broker.url, ["vigil/#"])
    problems: dict[str, str] = {}
    try:
        with ThreadPoolExecutor(len(PROFILES)) as pool:
            runs = pool.map(lambda name: run_under(name, broker.url, tmp_path), PROFILES)
            for name, res in zip(PROFILES, runs, strict=True):
                try:
                    check_run(name, res, collector, tmp_path)
                except AssertionError as exc:
                    problems[name] = str(exc)[-3000:]
    finally:
        collector.close()
        broker.stop()
    assert not problems, "\n\n".join(f"{name}: {problem}" for name, problem in problems.items())
