"""Nothing accepted is lost while the broker restarts under a publishing agent.

The agent is a real process publishing the synthetic street as fast as it can to a real Mosquitto
that keeps its sessions across clean restarts. At random moments the broker is restarted (SIGTERM,
start again); between restarts the link is cut while a window of publishes is in flight (sent into a
black hole, so no PUBACK can come), and the agent is killed -9 and started again on the same state
directory. At the end the agent runs one last, finite stream and delivers everything by itself.
The witness is an independent subscriber with a persistent session (tests/oracle.py): every seq from
1 to the node's last one must have reached it, each with one id, the id the node committed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.uplink.link import LinkProxy, LinkState
from tests.brokers import Mosquitto
from tests.conftest import ROOT, agent_env, run_agent
from tests.oracle import SeqOracle, missing_runs

RESTARTS = int(os.environ.get("VIGIL_RESTARTS", "10"))
KILLS = int(os.environ.get("VIGIL_RESTART_KILLS", "3"))
CUTS = int(os.environ.get("VIGIL_RESTART_CUTS", "5"))
NODE = "pole-r"


def agent_command(state: Path, broker_url: str, events_out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "--simulate", "--source", "synthetic:11", "--no-realtime",
        "--node-id", NODE, "--state-dir", str(state), "--broker", broker_url, "--http", "off",
        "--events-out", str(events_out), *extra,
    ]  # fmt: skip


def agent_environment(protocol: str) -> dict[str, str]:
    return agent_env(
        VIGIL_UPLINK__PROTOCOL=protocol,
        VIGIL_UPLINK__RECONNECT_MIN_S="0.1",
        VIGIL_UPLINK__RECONNECT_MAX_S="0.5",
    )


def committed_ids(events_out: Path) -> dict[int, str]:
    """seq -> id as the node committed them (its local output, written after each commit; a kill -9
    between a commit and that write leaves a seq out, never a wrong id)."""
    found: dict[int, str] = {}
    for line in events_out.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the last line of a killed run may be cut short
        found[int(event["seq"])] = str(event["id"])
    return found


def cut_with_window_in_flight(link: LinkProxy, attempts: int = 3) -> str | None:
    """Once the agent is publishing through the link, swallow what it sends until publishes are in
    flight, then reset the connection. Returns what went wrong, if anything.

    How much goes in flight follows the measured link (about two seconds of it, at least 2 kB), and a
    quiet moment may leave the agent with nothing to send: then the black hole ends without a cut
    (what it held is delivered, as TCP would) and the cut is tried again on the next traffic."""
    for _ in range(attempts):
        flowing = link.bytes_up + 2000
        if not link.wait_for(lambda p, f=flowing: p.bytes_up >= f, 60):
            return "the agent is not publishing through the link"
        link.set_state(LinkState("blackhole"))
        # publishes held on their way (an event is over 200 bytes), or their PUBACKs (4 bytes each)
        up, down = link.bytes_blackholed + 600, link.bytes_blackholed_down + 12
        if link.wait_for(lambda p, u=up, d=down: p.bytes_blackholed >= u or p.bytes_blackholed_down >= d, 30):
            link.set_state(LinkState("down"))  # the connection is reset: what was held is lost with it
            link.set_state(LinkState())
            return None
        link.set_state(LinkState())
    return f"nothing was in flight during any of {attempts} attempts to cut"


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_restarts_and_kill_9_while_publishing_lose_nothing(tmp_path, protocol):
    broker = Mosquitto(tmp_path / "broker", persistent=True).start()
    link = LinkProxy(("127.0.0.1", broker.port)).start()  # the test's own cable between agent and broker
    broker_url = "mqtt://{}:{}".format(*link.address)
    oracle = SeqOracle(broker.url)
    state = tmp_path / "state"
    events_out = tmp_path / "events.jsonl"
    rng = random.Random(f"restarts-{protocol}")
    restarts = RESTARTS if protocol == "3.1.1" else max(3, RESTARTS // 2)
    plan = ["restart"] * restarts + ["kill"] * KILLS + ["cut"] * CUTS
    rng.shuffle(plan)
    env = agent_environment(protocol)
    command = agent_command(state, broker_url, events_out)
    logs = tmp_path / "agent.log"

    def start() -> subprocess.Popen[bytes]:
        with logs.open("ab") as out:  # every run's log, for the message of a failing assertion
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out)

    def context(what: str) -> str:
        return f"{what}\nlast agent log lines:\n" + "\n".join(logs.read_text().splitlines()[-25:])

    agent = start()
    try:
        for step, fault in enumerate(plan):
            # a random amount of traffic first, so faults land mid-stream, at a different point each time;
            # waiting on the witness also proves the agent recovered from the previous fault by itself
            target = oracle.messages + rng.randint(5, 60)
            assert oracle.wait_for(lambda o, t=target: o.messages >= t, 90), context(
                f"step {step}: no events reached the broker after the previous {plan[step - 1]!r}"
            )
            if fault == "restart":
                broker.restart()
            elif fault == "cut":
                problem = cut_with_window_in_flight(link)
                assert problem is None, context(f"step {step}: {problem}")
            else:
                agent.send_signal(signal.SIGKILL)
                agent.wait(10)
                agent = start()
        target = oracle.messages + 20
        assert oracle.wait_for(lambda o: o.messages >= target, 90), context("no events after the last fault")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        # the last run: a short finite stream; at its end the agent delivers what is spooled, then exits
        final = run_agent(
            *agent_command(state, broker_url, events_out, "--max-frames", "40")[3:], env=env, timeout=120
        )
        assert final.returncode == 0, final.stderr[-2000:]
        assert "spool drained" in final.stderr, final.stderr[-2000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        oracle.close()
        link.stop()
        broker.stop()

    stats = json.loads(run_agent("spool", "stats", "--state-dir", str(state), "--json").stdout)
    last = stats["seq"]["events"]
    assert last > 100, "too few events to prove anything"
    got = oracle.seqs(NODE)
    assert not missing_runs(set(got), last), f"seqs never delivered: {missing_runs(set(got), last)} of {last}"
    assert max(got) == last, f"the witness saw seq {max(got)} but the node only committed {last}"
    twice = {seq: ids for seq, ids in got.items() if len(ids) > 1}
    assert not twice, f"seqs delivered with different ids: {twice}"
    committed = committed_ids(events_out)
    changed = {seq: (committed[seq], got[seq]) for seq in committed if got[seq] != {committed[seq]}}
    assert not changed, f"delivered ids differ from the committed ones: {changed}"
    assert stats["depth"] == 0
    assert all(not cls["drops"] for cls in stats["classes"].values()), stats["classes"]
    assert not stats.get("set_aside"), stats
