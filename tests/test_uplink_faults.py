"""The whole agent against a real broker under faults: kill -9 at random moments, a corrupt spool,
a scripted link, and a second broker (RabbitMQ's MQTT plugin)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys

import pytest

from agent.uplink.mqtt.publisher import HANDED_OVER
from tests.brokers import Collector
from tests.conftest import ROOT, agent_env, read_events, run_agent
from tests.delivery import assert_all_delivered

KILL_CYCLES = int(os.environ.get("VIGIL_KILL_CYCLES", "50"))
INFLIGHT = 20


def test_kill_9_at_random_moments_loses_no_accepted_event(broker, tmp_path):
    """≥50 times: start the agent with events flowing, SIGKILL it at a random moment. Then the agent
    runs once more on the same state directory, a short finite stream, and delivers by itself what the
    killed runs left in the spool: every seq ever accepted arrives, and duplicates stay within the
    in-flight window."""
    state = tmp_path / "state"
    collector = Collector(broker.url, ["vigil/pole-k/#"])
    rng = random.Random(20261127)
    try:
        for cycle in range(KILL_CYCLES):
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "--source", f"synthetic:{cycle}", "--no-realtime",
                 "--broker", broker.url, "--node-id", "pole-k", "--state-dir", str(state)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
                env=agent_env(),
            )
            try:
                # events are flowing once the first accepted one is printed; kill at a random moment after
                ready, _, _ = select.select([proc.stdout], [], [], 60)
                assert ready and proc.stdout.readline(), f"cycle {cycle}: no event from the agent"
                proc.wait(timeout=rng.uniform(0.0, 1.2))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            else:
                pytest.fail(f"agent exited by itself in cycle {cycle} with {proc.returncode}")
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.stdout.close()
        final = run_agent(
            "--source", "synthetic:999", "--no-realtime", "--max-frames", "20", "--broker", broker.url,
            "--node-id", "pole-k", "--state-dir", str(state), timeout=120,
        )  # fmt: skip
        assert final.returncode == 0, final.stderr[-2000:]
        assert "spool drained; exiting" in final.stderr, final.stderr[-2000:]
        stats = assert_all_delivered(collector, state, "pole-k")  # gapless: nothing accepted was lost
    finally:
        collector.close()
    accepted = stats["seq"]["events"]
    seqs = [json.loads(m.payload)["seq"] for m in collector.snapshot() if m.topic.endswith("/events")]
    assert accepted > KILL_CYCLES  # events really flowed
    duplicates = len(seqs) - len(set(seqs))
    assert duplicates <= KILL_CYCLES * INFLIGHT * HANDED_OVER  # what one connection had handed to paho
    print(f"{KILL_CYCLES} kills: {accepted} events accepted, all delivered, {duplicates} duplicates")


def test_corrupt_spool_is_moved_aside_and_the_agent_runs(tmp_path, event_validator):
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"\x00\xffnot sqlite" * 1000
    (state / "spool.db").write_bytes(garbage)
    res = run_agent(
        "--simulate",
        "--source",
        "synthetic:2",
        "--max-frames",
        "150",
        "--no-realtime",
        "--state-dir",
        str(state),
    )
    assert res.returncode == 0, res.stderr
    aside = list(state.glob("spool.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # moved, never deleted
    assert "moved aside" in res.stderr
    events = read_events(res.stdout)
    assert events[0]["type"] == "spool_recovered" and events[0]["priority"] == "critical"
    for event in events:
        event_validator.validate(event)
    assert len(events) > 1


def test_simulate_with_broker_and_link_profile(broker, tmp_path):
    """`agent --simulate --broker … --link-profile FILE`: the link dies near the end of a finite stream
    and comes back slower; the agent reconnects by itself and, before it exits, delivers every event
    and thumbnail it committed. Nobody else touches its spool."""
    profile = tmp_path / "blip.toml"
    profile.write_text(
        'repeat = false\n[[step]]\nseconds = 6\nmode = "up"\n'
        '[[step]]\nseconds = 5\nmode = "down"\n'
        '[[step]]\nseconds = 600\nmode = "up"\nrate_bps = 20000\n'
    )
    collector = Collector(broker.url, ["vigil/sim-node/#"])
    state = tmp_path / "state"
    try:
        res = run_agent(
            "--simulate", "--source", "synthetic:6", "--max-frames", "120", "--broker", broker.url,
            "--link-profile", str(profile), "--state-dir", str(state), "--http", "off", timeout=180,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "link profile blip" in res.stderr
        assert "link: down" in res.stderr  # the outage happened (the proxy resets the connection)
        assert "spool drained; exiting" in res.stderr, res.stderr[-2000:]
        printed = read_events(res.stdout)
        assert printed and [e["seq"] for e in printed] == list(range(1, len(printed) + 1))
        stats = assert_all_delivered(collector, state, "sim-node")
    finally:
        collector.close()
    assert stats["seq"]["events"] == len(printed)


def test_bad_broker_settings_are_one_clear_line(tmp_path):
    res = run_agent(
        "--source",
        "synthetic",
        "--max-frames",
        "5",
        "--broker",
        "http://example",
        "--state-dir",
        str(tmp_path),
    )
    assert res.returncode == 2 and "uplink" in res.stderr and "mqtt://" in res.stderr
    env = agent_env(VIGIL_UPLINK__TLS__CA_FILE=str(tmp_path / "missing-ca.crt"))
    res = run_agent(
        "--source",
        "synthetic",
        "--max-frames",
        "5",
        "--broker",
        "mqtts://127.0.0.1:1",
        "--state-dir",
        str(tmp_path),
        env=env,
    )
    assert res.returncode == 1 and "missing-ca.crt does not exist" in res.stderr
    assert "Traceback" not in res.stderr


# -- RabbitMQ: the kind of clustered broker a fleet moves to ------------------------------------------
RABBIT_BIN = "/usr/lib/rabbitmq/bin"  # the scripts themselves; /usr/sbin wrappers switch to the rabbitmq user


def _rabbitmq_available() -> bool:
    return os.path.exists(f"{RABBIT_BIN}/rabbitmq-server")


@pytest.fixture
def rabbitmq(tmp_path):
    if not _rabbitmq_available():
        pytest.skip("rabbitmq-server is not installed (./scripts/setup installs it)")
    from tests.brokers import free_port, wait_port

    amqp, mqtt, dist = free_port(), free_port(), free_port()
    base = tmp_path / "rabbit"
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True)
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.default = 127.0.0.1:{mqtt}\n"
        "mqtt.allow_anonymous = true\nloopback_users = none\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    node = f"vigiltest{mqtt}@localhost"
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_BASE": str(base),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_DIST_PORT": str(dist),
        "HOME": str(base),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
    }
    log = (base / "server.out").open("wb")
    proc = subprocess.Popen(
        [f"{RABBIT_BIN}/rabbitmq-server"], env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        wait_port(mqtt, timeout=90, proc=proc)
    except (TimeoutError, RuntimeError) as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"rabbitmq did not start: {exc}; see {base / 'server.out'}")
    yield f"mqtt://127.0.0.1:{mqtt}"
    subprocess.run(
        [f"{RABBIT_BIN}/rabbitmqctl", "-n", node, "stop"], env=env, capture_output=True, timeout=60
    )
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_end_to_end_delivery_through_rabbitmq(rabbitmq, tmp_path):
    collector = Collector(rabbitmq, ["vigil/sim-node/#"])
    state = tmp_path / "state"
    try:
        res = run_agent(
            "--source",
            "synthetic:3",
            "--max-frames",
            "200",
            "--no-realtime",
            "--broker",
            rabbitmq,
            "--state-dir",
            str(state),
            "--simulate",
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert "spool drained; exiting" in res.stderr, res.stderr[-2000:]
        assert read_events(res.stdout)
        assert_all_delivered(collector, state, "sim-node")
        assert [m for m in collector.snapshot() if "/thumbs/" in m.topic]
    finally:
        collector.close()
    # retained status works on RabbitMQ too (its retained-message store is per node)
    late = Collector(rabbitmq, ["vigil/sim-node/status"], client_id="late")
    try:
        assert late.wait_for(lambda ms: any(json.loads(m.payload)["state"] == "offline" for m in ms), 20)
    finally:
        late.close()
