"""Count the camera events an agent raises while its HTTP stream ends every few seconds.

    .venv/bin/python -m tests.camera_flaps --seconds 40 --session 2

Prints one JSON line: the camera events and critical records committed, the stream sessions the
camera served, the capture stage's reconnects and frames. `--agent-from DIR` runs the agent package
of another checkout (e.g. `mkdir /tmp/old && git archive main | tar -x -C /tmp/old`) with this
checkout's test helpers, to compare versions. tests/test_camera_outage.py asserts the outcome.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="how long the stream flaps")
    parser.add_argument("--session", type=float, default=2.0, help="seconds of video per connection")
    parser.add_argument("--agent-from", type=Path, help="a checkout whose agent package to run")
    args = parser.parse_args()
    if args.agent_from is not None:  # `tests` (this module's package) is imported already: only `agent` moves
        sys.path.insert(0, str(args.agent_from.resolve()))
    AgentHarness = importlib.import_module("tests.agent_harness").AgentHarness
    cameras = importlib.import_module("tests.cameras")
    StreamCamera, transport_stream = cameras.StreamCamera, cameras.transport_stream
    CLIP = importlib.import_module("tests.conftest").CLIP
    print(f"agent from {Path(importlib.import_module('agent').__file__ or '').parent}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vigil-flaps-") as tmp:
        work = Path(tmp)
        camera = StreamCamera(transport_stream(CLIP, work / "clip.ts", 30), work, session_s=args.session).start()
        config = {"capture": {"source": camera.url}, "tamper": {"enabled": False}}
        try:
            with AgentHarness(work / "state", config=config) as node:
                threading.Event().wait(args.seconds)  # the scenario's length, not synchronisation
                records = list(node.records)
                capture = node.running.capture
        finally:
            camera.stop()
    kinds = Counter(r["type"] for r in records if str(r.get("type", "")).startswith("camera_"))
    print(json.dumps({
        "seconds": args.seconds,
        "session_s": args.session,
        "camera_sessions": camera.sessions,
        "camera_events": dict(sorted(kinds.items())),
        "critical_records": sum(1 for r in records if r.get("priority") == "critical"),
        "reconnects": capture.reconnects,
        "frames_read": capture.frames_read,
    }))


if __name__ == "__main__":
    main()
