"""Power cuts, proved: the agent's state directory on LazyFS, which forgets every write that was not
fsynced when the power goes (`kill -9` alone never tests that: the page cache survives it).

First a canary shows the harness really drops unsynced data and really stops a writer inside the
call it crashed at. Then the real agent (`python -m agent`) publishes to a real Mosquitto, with an
independent persistent-session subscriber as the oracle, and its power is cut again and again: at
random moments, and inside commits (LazyFS dies at a chosen call on a spool file). After the cuts
the agent delivers everything by itself and tests/powercut.py checks every promise: seqs gapless up
to the spool's final seq, never one seq with two ids, every event it printed as accepted delivered
as such, no corrupt spool, no drop, every thumbnail intact.

VIGIL_POWER_CUTS (default 20) sets the number of random cuts; `scripts/powercut-soak N` runs long
soaks. Tests marked `long` run in CI (or with VIGIL_LONG_TESTS=1).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lazyfs import LazyFS, LazyFSUnavailable, lazyfs_binary
from tests.powercut import COMMIT_POINTS, SEGMENT_POINTS, Outcome, PowerCutScenario

RANDOM_CUTS = int(os.environ.get("VIGIL_POWER_CUTS", "20"))
COMMIT_CUTS = int(os.environ.get("VIGIL_COMMIT_CUTS", "6"))


@pytest.fixture(scope="module")
def lazyfs_bin() -> Path:
    try:
        return lazyfs_binary()
    except LazyFSUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the power-cut tests: {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def lazy(tmp_path, lazyfs_bin):
    with LazyFS(tmp_path / "lazyfs", binary=lazyfs_bin) as fs:
        yield fs


WRITER = """
import os, sys
mnt = sys.argv[1]
def write(name, data, sync):
    with open(os.path.join(mnt, name), "ab") as fh:
        fh.write(data)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())
write("synced", b"s" * 10000, True)
write("unsynced", b"u" * 10000, False)
write("half", b"h" * 5000, True)
write("half", b"H" * 5000, False)
held = open(os.path.join(mnt, "held-open"), "wb")  # still open when the power goes
held.write(b"o" * 3000)
held.flush()
print("written", flush=True)
sys.stdin.read()  # wait for the power cut
"""


def test_canary_a_cut_loses_exactly_what_was_not_fsynced(lazy):
    """The harness finds the writer by itself (an open file under the mount), kills it, and LazyFS
    drops every unsynced byte while fsynced bytes survive: without this the tests below prove nothing."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(lazy.mnt)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "written"
        assert (lazy.mnt / "unsynced").stat().st_size == 10000  # visible before the cut
        assert writer.pid in lazy.writers()
        cut = lazy.power_cut()
        assert writer.pid in cut.killed
        assert writer.wait(10) == -9
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
    assert (lazy.mnt / "synced").read_bytes() == b"s" * 10000
    # the name survives (LazyFS passes metadata through), the data does not
    assert (lazy.mnt / "unsynced").read_bytes() == b""
    assert (lazy.mnt / "half").read_bytes() == b"h" * 5000
    assert (lazy.mnt / "held-open").read_bytes() == b""
    assert (lazy.root / "synced").read_bytes() == b"s" * 10000  # the backing "disk" agrees


CRASHING_WRITER = """
import os, sys
mnt = sys.argv[1]
with open(os.path.join(mnt, "first"), "wb") as fh:
    fh.write(b"1" * 8000); fh.flush(); os.fsync(fh.fileno())
with open(os.path.join(mnt, "second.db-wal"), "wb") as fh:
    fh.write(b"2" * 8000); fh.flush()
    print("syncing", flush=True)
    try:
        os.fsync(fh.fileno())
        print("synced", flush=True)
    except OSError as exc:
        print("error", exc, flush=True)
"""


def test_canary_a_crash_inside_fsync_freezes_the_writer_and_loses_its_data(lazy):
    """LazyFS dies just before the armed fsync: the writer is killed while it waits inside that call
    (it never returns to print a line), its unsynced data is gone, the earlier fsynced file is intact,
    and the remounted file system works."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(lazy.mnt)], stdout=subprocess.PIPE, text=True
    )
    try:
        lazy.arm_crash("fsync", r"/second\.db-wal$", "before", also=[proc.pid])
        assert proc.stdout.readline().strip() == "syncing"
        assert lazy.wait_crash(20), "LazyFS did not crash at the armed fsync"
        cut = lazy.recover("fsync second.db-wal", also=[proc.pid])
        assert proc.wait(10) == -9
        assert proc.stdout.read() == ""  # neither "synced" nor an error: stopped inside the call
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert cut.frozen, "the writer could not be frozen (no pidfd_getfd): it may have seen the failure"
    assert proc.pid in cut.killed
    assert (lazy.mnt / "first").read_bytes() == b"1" * 8000
    assert (lazy.mnt / "second.db-wal").read_bytes() == b""
    (lazy.mnt / "after").write_bytes(b"ok")  # the remounted file system works
    assert (lazy.mnt / "after").read_bytes() == b"ok"


def _assert_ok(outcome: Outcome, scenario: PowerCutScenario) -> None:
    summary = outcome.summary()
    print(summary)
    assert not outcome.problems, "\n".join([*outcome.problems, f"(every run's stderr: {scenario.log})"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_power_cuts_at_random_moments_lose_no_accepted_event(tmp_path, lazyfs_bin):
    """≥ 20 power cuts at random moments (a fifth of them during start-up: spool opening and its
    recovery from the previous cut), the agent restarted after each on the same state directory."""
    with PowerCutScenario(tmp_path, seed=20261130, early_share=0.2) as scenario:
        for _ in range(RANDOM_CUTS):
            scenario.cut_at_random()
        outcome = scenario.finish()
        _assert_ok(outcome, scenario)
    assert len(outcome.cuts) == RANDOM_CUTS >= 1
    flowing = [c for c in outcome.cuts if c.printed > 0]
    assert len(flowing) >= RANDOM_CUTS // 2, "most cuts must hit a running agent with events flowing"
    assert outcome.final_seq > RANDOM_CUTS  # events really flowed


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_power_cuts_inside_commits_lose_no_accepted_event(tmp_path, lazyfs_bin):
    """Cuts timed inside commits: LazyFS dies before or after a write or an fsync of the spool's
    files, with the agent frozen inside that call, then the agent restarts on what was synced."""
    with PowerCutScenario(tmp_path, seed=4242) as scenario:
        for _ in range(COMMIT_CUTS):
            scenario.cut_inside_commit(COMMIT_POINTS)  # new and retired segments: the long test below
        outcome = scenario.finish()
        _assert_ok(outcome, scenario)
    crashes = [c for c in outcome.cuts if c.kind == "crash"]
    assert len(crashes) >= COMMIT_CUTS - 1, f"the armed calls were not reached: {outcome.cuts}"


@pytest.mark.long
@pytest.mark.timeout(1200)
def test_power_cuts_around_new_and_retired_segments_and_a_longer_mix(tmp_path, lazyfs_bin):
    """A small spool budget makes the spool start new segments and unlink (after compacting) old ones
    often, so cuts land there; mixed with random cuts and cuts in commits."""
    with PowerCutScenario(tmp_path, seed=777, env={"VIGIL_SPOOL__BUDGET_MB": "2"}) as scenario:
        for n in range(30):
            if n % 3 == 0:
                scenario.cut_inside_commit(SEGMENT_POINTS)
            elif n % 3 == 1:
                scenario.cut_inside_commit()
            else:
                scenario.cut_at_random()
        outcome = scenario.finish()
        _assert_ok(outcome, scenario)
    reached = [c for c in outcome.cuts if c.kind == "crash" and "segment" in c.fault]
    assert len(reached) >= 5, f"too few cuts around segments: {outcome.cuts}"
