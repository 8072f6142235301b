"""Power cuts against the real agent: the scenario behind tests/test_powercut.py and
`scripts/powercut-soak`.

The agent runs as a real process (`python -m agent --simulate …`), its state directory on a LazyFS
mount (tests/lazyfs.py), publishing to a real Mosquitto that never drops what it queued. An
independent subscriber with a persistent session is the oracle. Each cycle starts the agent on the
same state directory and cuts its power at a random moment (or inside a commit: LazyFS kills itself
at a chosen call on the spool's files). Afterwards the agent, started once more, has to deliver
everything by itself, and the oracle's record is checked against the promises:

- every seq from 1 to the spool's final seq is delivered, and none beyond it (gapless: nothing lost);
- no seq is ever delivered with two different ids, nor one id under two seqs;
- every event the agent printed as accepted (its stdout line, written after the commit) is delivered
  with that very id and seq (an accepted event survives the cut);
- the spool is never found corrupt (no segment set aside as `*.corrupt-*`, no `spool_recovered`
  event) and counts no drop; every thumbnail an event names arrives with that event's sha256.

Only the agent's public surface is used (command line, environment, MQTT topics, stdout, `agent
spool stats --json`), so the scenario outlives any rewrite of the spool and the publisher.

    python -m tests.powercut --cuts 200            # what scripts/powercut-soak runs; prints JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.blackbox import NODE, AgentProcess, Oracle, spool_stats
from tests.brokers import Mosquitto
from tests.conftest import agent_env
from tests.lazyfs import LazyFS

# The broker must not be the one that loses messages: no cap on what it queues for the oracle.
BROKER_EXTRA = "max_queued_messages 0\nmax_queued_bytes 0\n"


@dataclass(frozen=True)
class CrashPoint:
    """Where LazyFS kills itself: `timing` ("before"/"after") the next `op` on a path matching `path`."""

    op: str
    path: str
    timing: str
    what: str  # for reports

    def __str__(self) -> str:
        return f"crash {self.timing} {self.op}: {self.what}"


# A commit is one write and one fdatasync of the active segment of the spool's log.
SPOOL_FILES = r"/spool/seg-\d+\.log$"
COMMIT_POINTS = [
    CrashPoint("fsync", SPOOL_FILES, "before", "a commit written, not yet durable"),
    CrashPoint("fsync", SPOOL_FILES, "after", "a commit durable, the agent never told"),
    CrashPoint("write", SPOOL_FILES, "before", "the write of a commit"),
    CrashPoint("write", SPOOL_FILES, "after", "a commit written, not yet synced"),
]
# With a small budget the spool starts new segments and copies the last waiting records of an old one
# forward (compaction) often: a crash at the directory entry of a new segment, while an old one is
# unlinked or kept as a spare, or when a spare becomes the new segment, lands inside that.
SEGMENT_POINTS = [
    CrashPoint("create", SPOOL_FILES, "after", "a new segment created, its snapshot not yet written"),
    CrashPoint("unlink", SPOOL_FILES, "before", "an old segment about to be unlinked after compaction"),
    CrashPoint("rename", SPOOL_FILES, "after", "a retired segment kept as a spare file"),
    CrashPoint("rename", r"/spool/spare-\d+\.log$", "after", "a spare reused as a new segment, no snapshot yet"),
]
CRASH_POINTS = COMMIT_POINTS


# -- the scenario ----------------------------------------------------------------------------------
@dataclass
class CutRecord:
    """One cycle: the run it ended, what it was, when, and what the run had printed as accepted."""

    n: int
    run: str
    kind: str  # "clear" (kill -9 + drop unsynced) or "crash" (LazyFS died at `fault`)
    fault: str
    seconds_into_run: float
    printed: int
    max_printed_seq: int
    killed: list[int] = field(default_factory=list)


@dataclass
class Outcome:
    cuts: list[CutRecord]
    final_seq: int
    delivered_events: int
    unique_seqs: int
    duplicates: int
    crash_points_not_reached: int
    problems: list[str]
    stats: dict[str, Any]
    seconds: float

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for cut in self.cuts:
            kinds[cut.fault or cut.kind] += 1
        return {
            "cuts": len(self.cuts),
            "by_kind": dict(kinds),
            "crash_points_not_reached": self.crash_points_not_reached,
            "accepted_events": self.final_seq,
            "delivered_messages": self.delivered_events,
            "unique_seqs": self.unique_seqs,
            "duplicates": self.duplicates,
            "ok": not self.problems,
            "problems": self.problems,
            "seconds": round(self.seconds, 1),
        }


class PowerCutScenario:
    """Drives the cycles and the final check. `folder` holds the LazyFS mount, the broker and the
    agents' logs (`agent.log`: every run's stderr, headed by its command line)."""

    def __init__(
        self, folder: Path, *, seed: int = 1, early_share: float = 0.2, env: dict[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.rng = random.Random(seed)
        self.seed = seed
        self.early_share = early_share
        self.extra_env = env or {}
        self.log = folder / "agent.log"
        self.broker = Mosquitto(folder / "broker", extra=BROKER_EXTRA)
        self.fs = LazyFS(folder / "lazyfs")
        self.oracle: Oracle | None = None
        self.runs: list[AgentProcess] = []
        self.cuts: list[CutRecord] = []
        self.not_reached = 0
        self.problems: list[str] = []
        self.started = time.monotonic()

    @property
    def state(self) -> Path:
        return self.fs.mnt / "state"

    def __enter__(self) -> PowerCutScenario:
        self.broker.start()
        self.fs.start()
        self.oracle = Oracle(self.broker.url)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        for run in self.runs:
            if run.alive():
                run.proc.kill()
                run.close()
        if self.oracle is not None:
            self.oracle.close()
        self.fs.stop()
        self.broker.stop()

    # -- runs ---------------------------------------------------------------------------------------
    def start_agent(self, *, realtime: bool = False) -> AgentProcess:
        n = len(self.runs)
        argv = [
            "--simulate",
            "--source",
            f"synthetic:{self.seed * 1000 + n}",
            "--realtime" if realtime else "--no-realtime",
            "--broker",
            self.broker.url,
            "--node-id",
            NODE,
            "--state-dir",
            str(self.state),
            "--http",
            "off",
        ]
        env = agent_env(
            VIGIL_UPLINK__RECONNECT_MIN_S="0.2", VIGIL_UPLINK__RECONNECT_MAX_S="1", **self.extra_env
        )
        run = AgentProcess(argv, env, self.log, f"run {n}")
        self.runs.append(run)
        return run

    def _gone_by_itself(self, run: AgentProcess) -> None:
        run.close()
        self.problems.append(
            f"{run.label}: the agent exited by itself with {run.proc.returncode} before the cut "
            f"(after {time.monotonic() - run.started:.1f}s; its stderr is in {self.log})"
        )
        raise RuntimeError(self.problems[-1])

    def _record(self, run: AgentProcess, kind: str, fault: str, killed: list[int]) -> CutRecord:
        run.close()
        record = CutRecord(
            len(self.cuts),
            run.label,
            kind,
            fault,
            round(time.monotonic() - run.started, 3),
            len(run.printed),
            run.max_seq(),
            killed,
        )
        self.cuts.append(record)
        self._check_not_corrupt(f"after cut {record.n}")
        return record

    def cut_at_random(self) -> CutRecord:
        """Start the agent and cut its power at a random moment: during start-up (spool opening,
        recovery of the last cut) for `early_share` of the cycles, else while events flow."""
        run = self.start_agent()
        if self.rng.random() < self.early_share:
            if run.wait_exit(self.rng.uniform(0.0, 2.5)):
                self._gone_by_itself(run)
        else:
            if not run.wait_printed(1, 90):
                self._gone_by_itself(run) if not run.alive() else self._no_events(run)
            if run.wait_exit(self.rng.uniform(0.0, 1.5)):
                self._gone_by_itself(run)
        cut = self.fs.power_cut(also=[run.pid])
        return self._record(run, "clear", "", cut.killed)

    def cut_inside_commit(self, points: list[CrashPoint] | None = None) -> CutRecord:
        """Start the agent and, once events flow, have LazyFS die at the next chosen call on a
        spool file: the agent is killed in the middle of a commit (or a checkpoint)."""
        run = self.start_agent()
        if not run.wait_printed(1, 90):
            self._gone_by_itself(run) if not run.alive() else self._no_events(run)
        if run.wait_exit(self.rng.uniform(0.0, 1.0)):
            self._gone_by_itself(run)
        point = self.rng.choice(points or CRASH_POINTS)
        fault = self.fs.arm_crash(point.op, point.path, point.timing, also=[run.pid])
        label = str(point)
        if self.fs.wait_crash(15):
            cut = self.fs.recover(fault, also=[run.pid])
            return self._record(run, "crash" if cut.frozen else "crash (not frozen)", label, cut.killed)
        self.not_reached += 1  # the call never came (e.g. no checkpoint in time): an ordinary cut
        cut = self.fs.disarm(also=[run.pid])
        return self._record(run, "clear", label + " (not reached)", cut.killed)

    def _no_events(self, run: AgentProcess) -> None:
        run.proc.kill()
        run.close()
        self.problems.append(f"{run.label}: no event accepted within 90 s (stderr in {self.log})")
        raise RuntimeError(self.problems[-1])

    def _check_not_corrupt(self, when: str) -> None:
        aside = (
            sorted(p.name for p in [*self.state.glob("spool/*.corrupt-*"), *self.state.glob("spool.db.corrupt-*")])
            if self.state.exists()
            else []
        )
        if aside and not any("corrupt" in p for p in self.problems):
            self.problems.append(f"{when}: the spool was found corrupt and moved aside: {aside}")

    # -- the end ------------------------------------------------------------------------------------
    def finish(self, timeout: float = 120.0) -> Outcome:
        """Let the agent deliver everything by itself (no help: the test never touches the spool),
        stop it cleanly, then check the oracle's record against every promise."""
        assert self.oracle is not None
        stats = self._stats("after the last cut")
        target = int(stats.get("seq", {}).get("events", 0))
        for attempt in range(5):
            run = self.start_agent(realtime=True)  # events keep coming, slowly, while it catches up
            goal = target

            def wanted(run: AgentProcess = run, goal: int = goal) -> int:
                return max(goal, run.max_seq())

            delivered = self.oracle.wait_seqs(wanted, timeout, run.alive)
            if not run.alive():
                self._gone_by_itself(run)
            run.terminate()
            stats = self._stats(f"after final run {attempt}")
            target = int(stats.get("seq", {}).get("events", 0))
            if not delivered:
                missing = sorted(set(range(1, wanted() + 1)) - self.oracle.seqs())
                self.problems.append(
                    f"final run {attempt}: the agent did not deliver {len(missing)} seq(s) within "
                    f"{timeout:.0f}s: {_ranges(missing)}"
                )
                break
            # events committed while it stopped wait in the spool for the next start
            if self.oracle.wait_seqs(lambda target=target: target, 5, lambda: True):
                break
        self._check_not_corrupt("at the end")
        return self._verify(stats)

    def _stats(self, when: str) -> dict[str, Any]:
        try:
            return spool_stats(self.state)
        except RuntimeError as exc:
            self.problems.append(f"{when}: {exc}")
            return {}

    def _verify(self, stats: dict[str, Any]) -> Outcome:
        assert self.oracle is not None
        final = int(stats.get("seq", {}).get("events", 0))
        events = list(self.oracle.events)
        by_seq: dict[int, set[str]] = defaultdict(set)
        by_id: dict[str, set[int]] = defaultdict(set)
        for e in events:
            by_seq[e["seq"]].add(e["id"])
            by_id[e["id"]].add(e["seq"])
        problems = self.problems
        if not stats:  # the spool could not be read (already a problem): judge against what was seen
            final = max([*by_seq, *(e["seq"] for r in self.runs for e in r.printed)], default=0)
        missing = sorted(set(range(1, final + 1)) - set(by_seq))
        if missing:
            problems.append(
                f"{len(missing)} of {final} accepted seqs never delivered: {_ranges(missing)}"
                + self._blame(missing)
            )
        beyond = sorted(s for s in by_seq if s > final or s < 1)
        if beyond:
            problems.append(
                f"delivered seqs beyond the spool's final seq {final}: {_ranges(beyond)}"
                + self._blame(beyond)
            )
        reused = {s: ids for s, ids in by_seq.items() if len(ids) > 1}
        if reused:
            detail = "; ".join(f"seq {s}: {sorted(ids)}" for s, ids in sorted(reused.items())[:10])
            problems.append(
                f"{len(reused)} seq(s) delivered with two different ids: {detail}"
                + self._blame(sorted(reused))
            )
        renumbered = {i: s for i, s in by_id.items() if len(s) > 1}
        if renumbered:
            problems.append(
                f"{len(renumbered)} id(s) delivered under two seqs: {list(renumbered.items())[:10]}"
            )
        lost = []
        for run in self.runs:
            for e in run.printed:
                if e["id"] not in by_seq.get(e["seq"], set()):
                    lost.append(f"seq {e['seq']} id {e['id']} ({run.label})")
        if lost:
            problems.append(
                f"{len(lost)} event(s) printed as accepted but never delivered as such: "
                + "; ".join(lost[:10])
            )
        recovered = [e["seq"] for e in events if e.get("type") == "spool_recovered"]
        recovered += [e["seq"] for r in self.runs for e in r.printed if e.get("type") == "spool_recovered"]
        if recovered:
            problems.append(
                f"the spool reported itself recovered from corruption (spool_recovered seq {recovered})"
            )
        drops = {name: c.get("drops") for name, c in stats.get("classes", {}).items() if c.get("drops")}
        if drops:
            problems.append(f"the spool counted drops: {drops}")
        problems.extend(self._thumb_problems(events))
        return Outcome(
            self.cuts,
            final,
            len(events),
            len(by_seq),
            len(events) - len(by_seq),
            self.not_reached,
            problems,
            stats,
            time.monotonic() - self.started,
        )

    def _thumb_problems(self, events: list[dict[str, Any]]) -> list[str]:
        assert self.oracle is not None
        bad = []
        for e in {e["id"]: e for e in events}.values():
            thumb = e.get("thumb")
            if not thumb:
                continue
            got = self.oracle.thumbs.get(e["id"], [])
            if not got:
                bad.append(f"seq {e['seq']}: thumbnail never delivered")
            elif any(hashlib.sha256(p).hexdigest() != thumb["sha256"] for p in got):
                bad.append(f"seq {e['seq']}: a delivered thumbnail does not match its sha256")
        return [f"{len(bad)} thumbnail problem(s): " + "; ".join(bad[:10])] if bad else []

    def _blame(self, seqs: list[int]) -> str:
        """Which run printed these seqs, and which cut ended that run: where to look in the logs."""
        notes = []
        for run in self.runs:
            mine = sorted({e["seq"] for e in run.printed} & set(seqs))
            if mine:
                cut = next((c for c in self.cuts if c.run == run.label), None)
                how = (
                    f"ended by cut {cut.n} ({cut.fault or cut.kind}) {cut.seconds_into_run}s in"
                    if cut
                    else "the final run"
                )
                notes.append(f"{run.label} printed {_ranges(mine)}, {how}")
        return (" [" + "; ".join(notes) + "]") if notes else ""


def _ranges(values: list[int]) -> str:
    """1,2,3,7,9,10 -> '1-3, 7, 9-10' (at most 20 ranges)."""
    out: list[str] = []
    start = prev = None
    for v in sorted(values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(out[:20]) + (f" … ({len(out)} ranges)" if len(out) > 20 else "")


def run(
    cuts: int, *, seed: int, crash_share: float, folder: Path, env: dict[str, str] | None = None
) -> Outcome:
    """`cuts` cycles (a `crash_share` of them inside commits), then the final delivery and check."""
    with PowerCutScenario(folder, seed=seed, env=env) as scenario:
        try:
            for _ in range(cuts):
                if scenario.rng.random() < crash_share:
                    scenario.cut_inside_commit()
                else:
                    scenario.cut_at_random()
            return scenario.finish()
        except RuntimeError:
            return scenario._verify(scenario._stats("after the failure"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/powercut-soak",
        description="Cut the agent's power N times (LazyFS under its state directory, a real Mosquitto, "
        "a persistent-session subscriber as the oracle), let it deliver everything, check; prints JSON.",
    )
    parser.add_argument("cuts", type=int, help="number of power cuts")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument(
        "--crash-share",
        type=float,
        default=0.3,
        help="share of cuts timed inside a commit by a LazyFS crash fault (default 0.3)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep logs, broker and LazyFS folders here (default: a temporary folder)",
    )
    parser.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="spool budget for the agent (e.g. 2: segments then turn over and are compacted often, so "
        "crash points inside that are reached; default: the agent's default)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="vigil-powercut-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        env = {"VIGIL_SPOOL__BUDGET_MB": str(args.budget_mb)} if args.budget_mb else None
        outcome = run(args.cuts, seed=seed, crash_share=args.crash_share, folder=folder, env=env)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    summary = {"seed": seed, **outcome.summary()}
    if args.keep is not None:
        summary["folder"] = str(folder)
        (folder / "cuts.json").write_text(json.dumps([asdict(c) for c in outcome.cuts], indent=1))
    print(json.dumps(summary, indent=2))
    return 0 if outcome.problems == [] else 1


if __name__ == "__main__":
    sys.exit(main())
