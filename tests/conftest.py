"""Shared fixtures: paths to ../shared data (skipped with a reason when absent), the event schema,
and a helper that runs the real `agent` command as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VIGIL_SHARED", ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
YOLOX = DATA / "models" / "yolox_nano" / "yolox_nano.onnx"
CENTERFACE = DATA / "models" / "centerface" / "centerface.onnx"
CLIP = DATA / "video" / "one-by-one-person-detection.mp4"
NMEA_DIR = DATA / "nmea"
ASTRONAUT = DATA / "images" / "astronaut.png"
DEFAULT_MODEL = ROOT / "models" / "vigil-synth" / "vigil-synth.onnx"


def shared(path: Path) -> Path:
    """Return a ../shared file, or skip the test saying which file is missing and why it matters."""
    if not path.exists():
        pytest.skip(f"shared test data {path} is absent (CI always has ../shared/data; see its SOURCE.md)")
    return path


@pytest.fixture(scope="session")
def event_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "schema" / "event-v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _mosquitto(folder: Path) -> Iterator[Mosquitto]:
    running = Mosquitto(folder).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free port for one test (a file that needs another configuration, TLS or
    persistence, defines its own `broker`)."""
    yield from _mosquitto(tmp_path / "broker")


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One real Mosquitto shared by a module's tests (for tests that leave it as they found it)."""
    yield from _mosquitto(tmp_path_factory.mktemp("broker"))


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_agent(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m agent ARGS` to completion (the real console entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or agent_env(),
        cwd=ROOT,
        input=input,
    )


def read_events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def committed_thumbnails(state_dir: Path) -> dict[str, bytes]:
    """Thumbnails (by event id) the agent committed to its spool, read back from the segment files
    (delivered ones too, while their segment is still there)."""
    from agent.uplink.spool import codec
    from agent.uplink.spool.segments import read_only_groups

    found = {}
    for _segment, groups in read_only_groups(state_dir / "spool"):
        for entry in codec.iter_entries(groups):
            if entry.kind == codec.RECORD:
                fields = codec.decode_record(entry.body)
                if fields.stream == "thumbs":
                    found[fields.id] = bytes(entry.body[fields.payload_at :])
    return found


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `long` run in CI (CI=true, set by .ci/run) and when VIGIL_LONG_TESTS=1; a plain
    local ./scripts/test skips them and says how to run them."""
    if os.environ.get("CI") == "true" or os.environ.get("VIGIL_LONG_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="long proof: CI runs it; locally set VIGIL_LONG_TESTS=1")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
# Back-office fixtures (tests/fleet_support.py): a PostgreSQL server per test process, and `db_url`,
# which runs a test once on SQLite and once on PostgreSQL.
from tests.fleet_support import db_url, pg_server  # noqa: E402, F401
