#!/usr/bin/env python3
"""Run every benchmark, keep each one's JSON in bench/results/, and render the results table into
bench/README.md and the Performance section of README.md (between their `bench:table` markers).

    .venv/bin/python bench/run_all.py                  # everything (about 30 minutes on 2 cores)
    .venv/bin/python bench/run_all.py --only pipeline motion
    .venv/bin/python bench/run_all.py --quick          # smaller runs: a smoke test of the scripts
    .venv/bin/python bench/run_all.py --render-only    # re-render the tables from bench/results/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
BEGIN, END = "<!-- bench:table:begin -->", "<!-- bench:table:end -->"

# name -> (full arguments, --quick arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "pipeline": ([], ["--rounds", "2", "--frames", "60"]),
    "motion": ([], ["--rounds", "1", "--scenes", "parked", "far", "--synthetic-frames", "300"]),
    "economy": ([], []),
    "latency": ([], ["--skip-clip", "--street-seconds", "20"]),
    "footprint": ([], ["--seconds", "10"]),
    "fleet": ([], ["--nodes", "200", "--seconds", "10", "--speeds", "1", "10"]),
    "uplink": ([], ["--rounds", "7"]),
    "wear": ([], ["--seconds", "40", "--warmup", "10"]),
    "ingest": ([], ["--nodes", "100", "--seconds", "20", "--rounds", "1"]),
}


def run(name: str, quick: bool) -> dict[str, Any]:
    full, small = BENCHMARKS[name]
    cmd = [sys.executable, str(BENCH / f"{name}.py"), *(small if quick else full)]
    print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout)
    result["_command"] = " ".join([".venv/bin/python", f"bench/{name}.py", *(small if quick else full)])
    result["_seconds"] = round(time.monotonic() - started, 1)
    result["_quick"] = quick
    return result


# -- rendering -------------------------------------------------------------------------------------
Row = tuple[str, str, str, str]  # benchmark, measure, result, goal


def _spread(s: dict[str, Any]) -> str:
    best = f"; best {s['best']:.2f}" if "best" in s else ""
    return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}{best})"


def rows_pipeline(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, res in r["results"].items():
        threads = key.split("_")[1]
        rows.append(
            (
                f"Pipeline vs bare onnxruntime, {threads} thread(s)",
                f"frames/s, agent ÷ bare loop (ORT defaults, decoding excluded: {res['bare']['median']:.0f} fps)",
                _spread(res["ratio_vigil_to_bare"]),
                "≥ 0.95",
            )
        )
        if "ratio_vigil_spin_to_bare" in res:
            rows.append(
                (
                    "",
                    "… agent with `detect.spin` (like for like: ORT's default session spins)",
                    _spread(res["ratio_vigil_spin_to_bare"]),
                    "≥ 0.95",
                )
            )
        rows.append(
            (
                "",
                "… agent ÷ the same loop on the agent's session (overhead alone)",
                _spread(res["ratio_vigil_to_bare_tuned"]),
                "",
            )
        )
        if "ratio_vigil_file_to_bare_file" in res:
            rows.append(
                (
                    "",
                    "… decoding from the file included (agent: on its capture thread)",
                    _spread(res["ratio_vigil_file_to_bare_file"]),
                    "",
                )
            )
        cpu = res.get("cpu_ms_per_frame")
        if cpu:
            names = [n for n in ("bare", "vigil", "vigil_spin") if n in cpu]
            rows.append(
                (
                    "",
                    "CPU ms per frame (all threads): " + " / ".join(names),
                    " / ".join(f"{cpu[n]:.1f}" for n in names),
                    "",
                )
            )
    c = r.get("components_ms")
    if c:
        rows.append(
            (
                "Pipeline, per frame (1 thread)",
                "median ms: inference / preprocess / motion gate / decode+NMS / tracker+events",
                f"{c['inference']['median']:.1f} / {c['preprocess_vigil']['median']:.2f} / "
                f"{c['motion_gate']['median']:.2f} / {c['decode_nms']['median']:.2f} / "
                f"{c['track_events']['median']:.3f}",
                "",
            )
        )
    return rows


def rows_motion(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    names = {
        "clip": "real clip",
        "parked": "static synthetic (parked car)",
        "empty": "static synthetic (empty)",
        "street": "synthetic street traffic",
    }
    for scene, label in names.items():
        s = r["scenes"].get(scene)
        if not s:
            continue
        on = s["gate_on"]
        rows.append(
            (
                f"Motion gate, {label}",
                "frames to detector; analysis CPU on÷off; appeared visits kept (on vs off)",
                f"{on['detector_share']:.0%}; {on['analysis_cpu_ratio_to_gate_off']:.2f}; "
                f"{on['recall_vs_reference']['kept']}/{on['recall_vs_reference']['reference']}",
                "recall must not drop",
            )
        )
    far = r["scenes"].get("far")
    if far:
        full, reg = far["gate_on"], far["regions"]
        rows.append(
            (
                "Motion regions, clip as a far camera (30 %, 1280×720)",
                "people's visits found (of the full-size clip's): whole frame → crops; detector runs",
                f"{full['recall_vs_reference']['kept']}/{full['recall_vs_reference']['reference']} → "
                f"{reg['recall_vs_reference']['kept']}/{reg['recall_vs_reference']['reference']}; "
                f"{full['detector_runs']} → {reg['detector_runs']}",
                "",
            )
        )
    return rows


def rows_economy(r: dict[str, Any]) -> list[Row]:
    full, meta = r["with_thumbnails"], r["metadata_only"]
    rows: list[Row] = [
        (
            "Uplink economy, real clip vs H.264",
            f"bytes published ÷ libx264 veryfast crf 23 ({r['h264']['bytes'] / 1e6:.2f} MB): "
            f"{full['events']} events + {full['thumbnails']} thumbnails",
            f"{r['ratio_with_thumbnails']:.2%}",
            "≤ 2 %",
        ),
        (
            "",
            f"metadata only ({meta['mean_event_bytes']} B per event, {', '.join(meta.get('schema', []))})",
            f"{r['ratio_metadata_only']:.3%}",
            "≤ 0.2 %",
        ),
    ]
    v1 = r.get("metadata_only_v1")
    if v1:
        rows.append(
            (
                "",
                f"… as complete vigil.event/1 records (`events.schema_revision = \"1\"`; {v1['mean_event_bytes']} B)",
                f"{r['ratio_metadata_only_v1']:.3%}",
                "",
            )
        )
    return rows


def rows_latency(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for scene, s in r["scenes"].items():
        t = s["total_ms"]
        if t["p50"] is None:
            continue
        rows.append(
            (
                f"Latency, {scene.replace('_', ' ')}",
                f"captured → PUBACK ms p50/p95/p99 ({s['events']} events); inference share; spool commit wait p50",
                f"{t['p50']:.0f} / {t['p95']:.0f} / {t['p99']:.0f}; {s.get('inference_share_of_total', 0):.0%}; "
                f"{s['spool_ms']['p50']:.0f} ms",
                "",
            )
        )
    return rows


def rows_footprint(r: dict[str, Any]) -> list[Row]:
    st, idle = r["startup"], r["idle"]
    room = idle["room_yolox"]
    return [
        (
            "Footprint",
            "start-up to first analysed frame (YOLOX-Nano / vigil-synth)",
            f"{st['yolox']['to_first_frame_s']:.2f} s / {st['synth']['to_first_frame_s']:.2f} s",
            "",
        ),
        (
            "",
            "peak RSS: idle / analysing the real clip in real time",
            f"{room['gate_on']['peak_rss_mb']:.0f} MB / {r['clip_realtime']['peak_rss_mb']:.0f} MB",
            "",
        ),
        (
            "",
            "CPU of an idle node at 10 fps, static room (YOLOX-Nano): gate on / off (100 % = one core)",
            f"{room['gate_on']['cpu_percent']:.1f} % / {room['gate_off']['cpu_percent']:.1f} %",
            "",
        ),
    ]


def rows_fleet(r: dict[str, Any]) -> list[Row]:
    phases = r["phases"]
    day = r["per_node_day"]
    real = phases.get("speed_1x", {})
    kept = [
        (k, v)
        for k, v in phases.items()
        if k.startswith("speed_") and v["keeps_up"] and v["simulator_kept_pace"]
    ]
    top_name, top = max(kept, key=lambda kv: kv[1]["acked_per_s"]) if kept else ("", {})
    storm = phases["connect_storm"]
    rows: list[Row] = [
        (
            f"Fleet, {r['nodes']} nodes, one Mosquitto ({'TLS' if 'TLS' in r.get('transport', '') else 'TCP'})",
            f"realistic rate ({r['trace']}): messages/s acked; broker CPU; PUBACK p95",
            f"{real.get('acked_per_s', 0):.0f}/s; {real.get('broker_cpu_percent', 0):.1f} %; "
            f"{real.get('puback_ms', {}).get('p95', 0):.0f} ms",
            "",
        ),
    ]
    if top:
        rows.append(
            (
                "",
                f"highest rate sustained ({top_name.split('_')[1]}): messages/s; broker CPU; µs per message",
                f"{top['acked_per_s']:.0f}/s; {top['broker_cpu_percent']:.0f} %; "
                f"{top['broker_cpu_us_per_message']:.0f} µs",
                "",
            )
        )
    rows += [
        (
            "",
            "connect storm: all nodes at once → all connected; broker RSS per connection",
            f"{storm['all_connected_s']:.1f} s; {phases['broker_rss_kb']['per_connection']:.0f} kB",
            "",
        ),
        (
            "",
            f"per node per day at this trace's rate ({day['events_per_s']:.2f} events/s)",
            f"{day['total_mb']:.0f} MB ({day['metadata_mb']:.0f} metadata, {day['thumbnails_mb']:.0f} thumbnails, "
            f"{day['telemetry_mb']:.1f} telemetry)",
            "",
        ),
    ]
    return rows


def rows_uplink(r: dict[str, Any]) -> list[Row]:
    drain = r["backlog_drain"]
    ratio = drain["ratio_records_per_s"]
    ratio_text = _spread(ratio) if isinstance(ratio, dict) else f"{ratio:.2f}"
    return [
        (
            "Uplink backlog drain",
            f"a {drain['vigil']['records']:,}-record backlog, records/s: spool + publisher ÷ bare paho QoS 1 "
            f"({drain['bare_paho_qos1']['records_per_s']:.0f}/s)",
            ratio_text,
            "≥ 0.8",
        ),
        *(
            [
                (
                    "",
                    "… bare paho fed by a second thread in the publisher's windows (the thread layout alone)",
                    _spread(drain["ratio_fed_to_bare"]),
                    "",
                )
            ]
            if "ratio_fed_to_bare" in drain
            else []
        ),
        (
            "",
            "metadata latency under a 2 kB/s link with a backlog, p50 / p95",
            f"{r['brownout_2kBps']['metadata_latency_s_p50']:.1f} s / "
            f"{r['brownout_2kBps']['metadata_latency_s_p95']:.1f} s",
            "",
        ),
        (
            "",
            "bytes written to the device per event with a 4 kB thumbnail, 20 events/s (× payload; ext4 "
            "on a loop device)",
            r["disk"]["skipped"]
            if "skipped" in r["disk"]
            else f"{r['disk']['disk_bytes_per_event'] / 1000:.1f} kB ({r['disk']['times_payload']:.2f}×)",
            "≤ 2×",
        ),
    ]


def rows_wear(r: dict[str, Any]) -> list[Row]:
    costs = r["per_event"].get(r.get("headline_instrument") or "", None)
    if not costs:
        return []
    day = r["per_day_street"]
    without, with_thumb = costs["event_without_thumbnail"], costs["event_with_thumbnail"]
    where = "ext4 on a loop device" if r["headline_instrument"] == "device" else "/proc io of the agent"
    rows: list[Row] = [
        (
            f"SD-card wear, busy street ({where})",
            "bytes written per event without / with a thumbnail (× its payload)",
            f"{without['written'] / 1000:.1f} kB ({without['ratio']:.0f}×) / "
            f"{with_thumb['written'] / 1000:.1f} kB ({with_thumb['ratio']:.0f}×)",
            "≤ 2×",
        ),
        (
            "",
            f"per day at the street trace's rate ({day['events'] / 1000:.0f}k events): written / payload; of it idle",
            f"{day['written_mb'] / 1000:.2f} GB / {day['payload_mb']:.0f} MB ({day['ratio_to_payload']:.0f}×); "
            f"{day['of_which_idle_mb'] / 1000:.2f} GB",
            "",
        ),
    ]
    parts = r.get("parts_per_event")
    if parts:
        names = ["spool_log", "wal", "database", "shm", "thumbnail_files", "thumbnail_index", "other"]
        shown = [n for n in names if n in parts]
        fsyncs = sum(p["fsyncs"] for p in parts.values())
        rows.append(
            (
                "",
                "pages sent to the device per event, by file (LazyFS, thumbnails on): "
                + " / ".join(n.replace("_", " ") for n in shown)
                + "; fsyncs per event",
                " / ".join(f"{parts[n]['device_bytes'] / 1000:.1f} kB" for n in shown) + f"; {fsyncs:.1f}",
                "",
            )
        )
    cards = day["endurance"]
    rows.append(
        (
            "",
            "years until a card's rated writes: " + " / ".join(c.get("short", c["card"]) for c in cards),
            " / ".join(f"{c['years_at_this_rate']:.1f}" for c in cards),
            "",
        )
    )
    return rows


def rows_ingest(r: dict[str, Any]) -> list[Row]:
    b, rates = r["backlog"], r["messages_per_s"]
    outage = r["after_one_hour_outage"]

    def drain(kind: str) -> str:
        seconds = outage[kind]["drain_s"]
        return "never (slower than the fleet)" if seconds is None else f"{seconds / 60:.0f} min"

    return [
        (
            f"Back-office ingest, backlog of {b['nodes']} nodes × {b['seconds']:.0f} s (street trace)",
            f"messages/s stored, ÷ bare paho QoS 1 subscriber ({rates['bare']['median']:.0f}/s): SQLite",
            _spread(r["ratio_sqlite_to_bare"]),
            "",
        ),
        ("", "… PostgreSQL", _spread(r["ratio_postgresql_to_bare"]), ""),
        (
            "",
            "events/s stored: SQLite / PostgreSQL (acknowledged after commit; one ingest process)",
            f"{r['events_per_s']['sqlite']['median']:.0f} / {r['events_per_s']['postgresql']['median']:.0f}",
            "",
        ),
        (
            "",
            f"1,000 nodes after a one-hour outage ({outage['sqlite']['backlog_messages']:,} messages, live traffic "
            f"{outage['fleet']['live_messages_per_s']:.0f}/s going on): drain time SQLite / PostgreSQL",
            f"{drain('sqlite')} / {drain('postgresql')}",
            "",
        ),
    ]


RENDER: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "pipeline": rows_pipeline,
    "motion": rows_motion,
    "economy": rows_economy,
    "latency": rows_latency,
    "footprint": rows_footprint,
    "fleet": rows_fleet,
    "uplink": rows_uplink,
    "wear": rows_wear,
    "ingest": rows_ingest,
}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| benchmark | measure | result | goal |", "| --- | --- | --- | --- |"]
    for name, render in RENDER.items():
        if name in results:
            lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in render(results[name])]
    any_result = next(iter(results.values()), {})
    m = any_result.get("machine", {})
    lines.append("")
    lines.append(
        f"Measured on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, {m.get('arch', '?')}), onnxruntime "
        f"{m.get('onnxruntime', '?')}, OpenCV {m.get('opencv', '?')}; ratios are medians of per-round ratios of "
        "interleaved rounds (range, and the ratio of each variant's best round, in brackets). Reproduce: "
        "`.venv/bin/python bench/run_all.py`; one benchmark: the command in `bench/results/<name>.json` "
        "(`_command`)."
    )
    return "\n".join(lines)


def splice(path: Path, text: str) -> bool:
    """Replace what lies between the table markers of `path` (nothing happens without markers)."""
    if not path.exists():
        return False
    content = path.read_text()
    if BEGIN not in content or END not in content:
        return False
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument(
        "--quick", action="store_true", help="small runs (smoke test); results not for the README"
    )
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if not args.render_only:
        for name in args.only:
            result = run(name, args.quick)
            target = RESULTS / (f"{name}.quick.json" if args.quick else f"{name}.json")
            target.write_text(json.dumps(result, indent=1) + "\n")
    if args.quick:
        results = {n: json.loads((RESULTS / f"{n}.quick.json").read_text()) for n in args.only}
        print(table(results))
        return
    results = {n: json.loads(p.read_text()) for n in BENCHMARKS if (p := RESULTS / f"{n}.json").exists()}
    text = table(results)
    splice(BENCH / "README.md", text)
    if not args.no_readme:
        splice(ROOT / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
