#!/usr/bin/env python3
"""SD-card wear: bytes the agent writes to its storage per accepted event, in steady state.

The real agent (`python -m agent --simulate`, every stage) watches the busy synthetic street in real
time (synthetic:1 with vigil-synth: the scene `traces/street.json` was recorded from) and publishes
to a local Mosquitto that acknowledges at once, so the spool does what it does on a node with a good
link: commit, publish, delete on PUBACK. Three variants, one after the other, each measured over a
window of `--seconds` after a warm-up: thumbnails on (the street as it is: about half of the events
carry one), metadata only, and **idle** (the same scene and detector with a class list that matches
nothing: no event at all), which gives what the node writes per second regardless of events
(telemetry, housekeeping). Costs are then split, by least work rather than by fitting:

    written = idle_per_second × seconds + a × events + b × thumbnails

so `a` is what one event without a thumbnail adds, `a + b` one with a thumbnail. Instruments, side
by side (two agents at once on the same scene):

- **device**: the state directory on its own ext4 file system (4 KiB blocks, journal, `noatime`,
  as Raspberry Pi OS mounts its root) on a loop device; the bytes written *to the device* are the
  loop device's written sectors, with a `syncfs` at both ends of the window: data, journal and
  file-system metadata, which is what an SD card receives. Needs root (loop devices).
  The spool zero-fills a new segment file ahead of its log (agent/uplink/spool/segments.py), a
  megabyte at a time, until it has a retired segment's file to reuse: from the third segment on (at
  the default budget, 8 MB segments, a few hours of this street) it writes no zeros at all. Whether
  a zero-fill of the first segments falls inside a window is luck, so the device figure leaves the
  zeros written in the window out, as in that steady state (`measured` is the raw count).
- **process**: `/proc/<agent>/io` `write_bytes` of that same agent (pages it made dirty). On a
  kernel whose page cache keeps large folios (6.x here), a small write counts the whole folio it
  dirties, up to the megabyte the spool zero-filled at once, so this overstates a hundredfold
  (and `filesystem_overhead` is then meaningless); the device count is what the card receives.
- **files**: a second agent on LazyFS logging every operation (tests/lazyfs.py). Per kind of file
  (spool database, write-ahead log, shared-memory index, thumbnail files, their index, other state):
  write calls, bytes, fsyncs, and the 4 KiB pages a page cache would send to the device (distinct
  pages dirtied between two fsyncs of a file, or within 30 s, the kernel's writeback age, for files
  nobody fsyncs; pages of files deleted before that are never written). Skipped when LazyFS cannot run.

Payload is what left the node for the window's events as the broker delivered it: event JSON and
thumbnail JPEG bytes (no topics or MQTT headers). Writes per day follow from the street trace's rate
(events and thumbnails per second), next to SD-card endurance figures with their sources.

    .venv/bin/python bench/wear.py [--seconds 150] [--warmup 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import emit, machine, read_trace  # noqa: E402
from bench.wearmeter import PAGE, LoopDisk, proc_io, read_lazyfs_log, spool_extent, syncfs  # noqa: E402
from tests.brokers import Collector, Mosquitto  # noqa: E402
from tests.conftest import agent_env  # noqa: E402

TRACE = ROOT / "bench" / "traces" / "street.json"
DAY = 86400.0
MIN_EVENTS = 30  # fewer events in a window make the per-event split rough (said in the output)
VARIANTS: dict[str, dict[str, str]] = {  # name -> agent environment
    "thumbnails": {},
    "metadata_only": {"VIGIL_EVENTS__THUMBNAILS": "false"},
    "idle": {"VIGIL_DETECT__CLASSES": '["bicycle"]'},  # vigil-synth knows none: nothing is detected
}

# SD-card endurance from public sources. Manufacturers rate sequential video writes; small synced
# writes cost a card more internally (whole flash pages per write), so life is shorter than this.
ENDURANCE = [
    {
        "card": "WD Purple SC QD101 (surveillance microSD), 32 GB",
        "short": "WD Purple 32 GB",
        "rated_tb_written": round(512 * 32 / 1000, 1),
        "basis": "rated for up to 512 program/erase cycles (the 1 TB model: 512 TB written), at 32 GB",
        "source": "https://www.tomshardware.com/news/western-digital-has-1-tb-microsd-card-for-surveillance-16-years-lifespan",
    },
    {
        "card": "SanDisk High Endurance microSD, 128 GB",
        "short": "SanDisk High Endurance 128 GB",
        "rated_tb_written": 117.0,
        "basis": "10,000 hours of Full HD video at SanDisk's 26 Mbit/s (3.25 MB/s) = 117 TB",
        "source": "https://www.reddit.com/r/raspberry_pi/comments/xnkp71/reliability_of_microsd_endurance_cards_compared_w/",
    },
    {
        "card": "consumer QLC microSD, 32 GB",
        "short": "QLC 32 GB",
        "rated_tb_written": round(100 * 32 / 1000, 1),
        "basis": "QLC NAND is rated for 100 to 1,000 program/erase cycles; the low end, at 32 GB",
        "source": "https://www.techrepublic.com/article/micron-announces-1tb-industrial-microsd-aimed-at-surveillance-markets/",
    },
]


# -- one agent ------------------------------------------------------------------------------------
class AgentRun:
    """The agent as a process on a state directory; remembers when each event was accepted (printed)."""

    def __init__(self, state: Path, broker_url: str, *, node: str, env: dict[str, str], log: Path) -> None:
        self.node = node
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "--simulate", "--source", "synthetic:1", "--realtime",
             "--broker", broker_url, "--node-id", node, "--state-dir", str(state), "--http", "off"],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, cwd=ROOT,
            env=agent_env(**env),
        )  # fmt: skip
        self.accepted: list[tuple[float, dict[str, Any]]] = []  # (wall time printed, event)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="wear-agent-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                with self._lock:
                    self.accepted.append((time.time(), event))

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        with self._lock:
            return [e for t, e in self.accepted if t0 <= t < t1]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        self._log.close()
        return self.proc.returncode


def payload(events: list[dict[str, Any]], published: list[Any], node: str) -> dict[str, int]:
    """Bytes that left the node for these events, as delivered: event JSON and thumbnail JPEGs."""
    ids = {e["id"] for e in events}
    event_bytes: dict[str, int] = {}
    thumb_bytes: dict[str, int] = {}
    for m in published:
        if m.topic == f"vigil/{node}/events":
            event_id = json.loads(m.payload)["id"]
            if event_id in ids:
                event_bytes[event_id] = len(m.payload)
        elif m.topic.startswith(f"vigil/{node}/thumbs/") and m.topic.rsplit("/", 1)[1] in ids:
            thumb_bytes[m.topic.rsplit("/", 1)[1]] = len(m.payload)
    return {
        "events": len(events),
        "thumbnails": len(thumb_bytes),
        "event_bytes": sum(event_bytes.values()),
        "thumbnail_bytes": sum(thumb_bytes.values()),
        "bytes": sum(event_bytes.values()) + sum(thumb_bytes.values()),
        "undelivered": len(ids - set(event_bytes)),
    }


def measure_variant(
    name: str,
    folder: Path,
    broker: Mosquitto,
    *,
    warmup: float,
    seconds: float,
    instruments: set[str],
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One variant: the device agent and the LazyFS agent side by side over the same window."""
    from tests.lazyfs import LazyFS, LazyFSUnavailable

    out: dict[str, Any] = {}
    collector = Collector(broker.url, ["vigil/#"], client_id=f"wear-{name}")
    with contextlib.ExitStack() as stack:
        stack.callback(collector.close)
        disk: LoopDisk | None = None
        reason = LoopDisk.unavailable() if "device" in instruments else "not asked for"
        if reason is None:
            disk = stack.enter_context(LoopDisk(folder / f"{name}-loop"))
        else:
            out["device"] = {"skipped": reason}
        fs: LazyFS | None = None
        if "files" in instruments:
            try:
                fs = stack.enter_context(
                    LazyFS(folder / f"{name}-lazyfs", cache_mb=512, log_all_operations=True)
                )
            except LazyFSUnavailable as exc:
                out["files"] = {"skipped": str(exc)}
        base = disk.mnt if disk is not None else folder / f"{name}-plain"  # the process instrument's agent
        env = {**VARIANTS[name], **(extra_env or {})}
        agents = {
            "device": AgentRun(base / "state", broker.url, node="wear", env=env, log=folder / f"{name}.log")
        }
        if fs is not None:
            agents["files"] = AgentRun(
                fs.mnt / "state", broker.url, node="wear-files", env=env, log=folder / f"{name}-files.log"
            )
        try:
            time.sleep(warmup)  # start-up and first commits stay out of the steady state
            if disk is not None:
                syncfs(disk.mnt)
                dev0 = disk.written()
                spool0 = spool_extent(base / "state" / "spool")
            io0 = proc_io(agents["device"].proc.pid)
            t0 = time.time()
            time.sleep(seconds)  # the measurement window
            t1 = time.time()
            io1 = proc_io(agents["device"].proc.pid)
            if disk is not None:
                syncfs(disk.mnt)
                dev1 = disk.written()
                spool1 = spool_extent(base / "state" / "spool")
            ids = {e["id"] for a in agents.values() for e in a.between(t0, t1)}
            collector.wait_for(
                lambda ms: ids <= {json.loads(m.payload)["id"] for m in ms if m.topic.endswith("/events")}, 30
            )
        finally:
            codes = {kind: agent.stop() for kind, agent in agents.items()}
        if any(code != 0 for code in codes.values()):
            raise RuntimeError(f"{name}: an agent failed {codes}; see the logs in {folder} (--keep)")
        published = collector.snapshot()
        window = t1 - t0
        events = agents["device"].between(t0, t1)
        out.update(
            window_s=round(window, 1),
            events_per_s=round(len(events) / window, 2),
            payload=payload(events, published, "wear"),
        )
        written = io1["write_bytes"] - io0["write_bytes"]
        out["process"] = {
            "bytes": written,
            "cancelled": io1["cancelled_write_bytes"] - io0["cancelled_write_bytes"],
        }
        if disk is not None:
            files, log = spool1[0] - spool0[0], spool1[1] - spool0[1]
            out["device"] = {
                "bytes": dev1 - dev0 - files,  # no zero-filling in the steady state (module doc)
                "measured": dev1 - dev0,
                "spool_file_growth": files,
                "spool_log_growth": log,
            }
        if fs is not None:
            parts, others = read_lazyfs_log(sorted(fs.folder.glob("lazyfs.log*")), t0, t1)
            files_events = agents["files"].between(t0, t1)
            out["files"] = {
                "payload": payload(files_events, published, "wear-files"),
                "parts": parts,
                "bytes": sum(p["device_pages"] for p in parts.values()) * PAGE,
                "other_files": others[:20],
            }
    return out


# -- summary ---------------------------------------------------------------------------------------
def split_costs(runs: dict[str, dict[str, Any]], instrument: str) -> dict[str, Any] | None:
    """idle per second, a per event without a thumbnail, b per thumbnail (see the module doc)."""

    def total(name: str) -> float | None:
        if instrument == "files":
            return runs[name].get("files", {}).get("bytes")
        return runs[name].get(instrument, {}).get("bytes")

    def pay(name: str) -> dict[str, int]:
        return runs[name]["files"]["payload"] if instrument == "files" else runs[name]["payload"]

    if any(total(n) is None for n in VARIANTS):
        return None
    few = [n for n in ("metadata_only", "thumbnails") if pay(n)["events"] < MIN_EVENTS]
    idle = total("idle") / runs["idle"]["window_s"]  # type: ignore[operator]
    meta, thumbs = pay("metadata_only"), pay("thumbnails")
    a = (total("metadata_only") - idle * runs["metadata_only"]["window_s"]) / max(1, meta["events"])  # type: ignore[operator]
    rest = total("thumbnails") - idle * runs["thumbnails"]["window_s"] - a * thumbs["events"]  # type: ignore[operator]
    b = rest / max(1, thumbs["thumbnails"])
    event_payload = meta["event_bytes"] / max(1, meta["events"])
    thumb_payload = thumbs["thumbnail_bytes"] / max(1, thumbs["thumbnails"])
    return {
        "idle_bytes_per_s": round(idle),
        "event_without_thumbnail": {
            "written": round(a),
            "payload": round(event_payload),
            "ratio": round(a / event_payload, 2),
        },
        "event_with_thumbnail": {
            "written": round(a + b),
            "payload": round(event_payload + thumb_payload),
            "ratio": round((a + b) / (event_payload + thumb_payload), 2),
        },
        "events_measured": {"metadata_only": meta["events"], "thumbnails": thumbs["events"]},
        **(
            {"warning": f"fewer than {MIN_EVENTS} events in {few}: per-event figures are rough"}
            if few
            else {}
        ),
    }


def per_day(costs: dict[str, Any], trace: dict[str, Any]) -> dict[str, Any]:
    """Bytes written per day at the street trace's rate, and how long SD cards' ratings last at it."""
    scale = DAY / trace["duration_s"]
    events = sum(1 for r in trace["records"] if r["topic"] == "events") * scale
    thumbs = sum(1 for r in trace["records"] if r["topic"] == "thumbs") * scale
    payload = sum(r["bytes"] for r in trace["records"]) * scale
    a = costs["event_without_thumbnail"]["written"]
    b = costs["event_with_thumbnail"]["written"] - a
    idle = costs["idle_bytes_per_s"] * DAY
    written = idle + a * events + b * thumbs
    return {
        "events": round(events),
        "thumbnails": round(thumbs),
        "payload_mb": round(payload / 1e6, 1),
        "written_mb": round(written / 1e6, 1),
        "of_which_idle_mb": round(idle / 1e6, 1),
        "ratio_to_payload": round(written / payload, 2),
        "endurance": [
            {**card, "years_at_this_rate": round(card["rated_tb_written"] * 1e12 / written / 365, 1)}
            for card in ENDURANCE
        ],
    }


def parts_per_event(runs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The thumbnails run's device pages and fsyncs per accepted event, per kind of file (LazyFS)."""
    files = runs["thumbnails"].get("files", {})
    if "parts" not in files:
        return None
    n = max(1, files["payload"]["events"])
    return {
        kind: {
            "device_bytes": round(p["device_pages"] * PAGE / n),
            "bytes_written": round(p["bytes"] / n),
            "writes": round(p["writes"] / n, 1),
            "fsyncs": round(p["fsyncs"] / n, 2),
        }
        for kind, p in files["parts"].items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=150.0, help="measurement window per variant")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before each window")
    parser.add_argument(
        "--instruments", nargs="+", default=["device", "files"], choices=["device", "files"],
        help="device: ext4 on a loop device (and /proc io); files: LazyFS's per-file log",
    )  # fmt: skip
    parser.add_argument("--keep", type=Path, default=None, help="keep the agents' and LazyFS's logs here")
    parser.add_argument(
        "--commit-interval-ms", type=int, default=None,
        help="the agents' spool.commit_interval_ms (default: the agent's own); fewer commits on a quiet "
        "node trade latency and power-cut exposure for wear",
    )  # fmt: skip
    args = parser.parse_args()
    extra_env = (
        {"VIGIL_SPOOL__COMMIT_INTERVAL_MS": str(args.commit_interval_ms)} if args.commit_interval_ms else None
    )
    trace = read_trace(TRACE)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="vigil-wear-"))
    folder.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    try:
        broker = Mosquitto(folder / "broker").start()
        try:
            for name in VARIANTS:
                runs[name] = measure_variant(
                    name,
                    folder,
                    broker,
                    warmup=args.warmup,
                    seconds=args.seconds,
                    instruments=set(args.instruments),
                    extra_env=extra_env,
                )
        finally:
            broker.stop()
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    costs = {i: split_costs(runs, i) for i in ("device", "process", "files")}
    dev, proc = runs["thumbnails"].get("device", {}).get("bytes"), runs["thumbnails"]["process"]["bytes"]
    headline = next((i for i in ("device", "process") if costs[i] is not None), None)
    emit(
        {
            "benchmark": "wear",
            "machine": machine(),
            "scene": "synthetic:1 in real time (vigil-synth): the scene of traces/street.json",
            "commit_interval_ms": args.commit_interval_ms,  # None: the agent's default
            "headline_instrument": headline,
            "per_event": costs,
            "per_day_street": per_day(costs[headline], trace) if headline else None,
            "parts_per_event": parts_per_event(runs),
            # what ext4 adds (journal, inodes, directories) to the pages the agent dirtied
            "filesystem_overhead": round(dev / proc, 2) if dev and proc else None,
            "trace_events_per_s": round(
                sum(1 for r in trace["records"] if r["topic"] == "events") / trace["duration_s"], 2
            ),
            "runs": runs,
            "goal": "device bytes written per event <= 2x its payload (issue 12)",
        }
    )


if __name__ == "__main__":
    main()
