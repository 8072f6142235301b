"""`agent models list/fetch` against a local HTTP server serving ../shared/data/models."""

from __future__ import annotations

import json

import pytest

from agent import models
from agent.detect import load_detector
from tests.conftest import DATA, YOLOX, agent_env, run_agent, shared
from tests.fileserver import FileServer


@pytest.fixture
def mirror():
    shared(YOLOX)
    m = FileServer(DATA / "models")
    yield m
    m.close()


def test_list_shows_shipped_and_fetchable_models(state_dir):
    res = run_agent("models", "list", "--json", "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["vigil-synth"]["installed"]
    assert rows["yolox-nano"]["installed"] is None
    assert rows["yolox-nano"]["sha256"] == "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14"


def test_fetch_verifies_installs_and_the_agent_uses_it(mirror, state_dir):
    res = run_agent(
        "models", "fetch", "yolox-nano", "--mirror", mirror.url, "--state-dir", str(state_dir), "--progress"
    )
    assert res.returncode == 0, res.stderr
    installed = state_dir / "models" / "yolox-nano" / "yolox_nano.onnx"
    assert installed.read_bytes() == YOLOX.read_bytes()
    assert "100%" in res.stderr  # progress bar
    detector = load_detector(installed)
    assert detector.card.name == "yolox-nano"
    assert models.resolve("yolox-nano", state_dir) == installed
    # fetching again is a no-op
    again = run_agent("models", "fetch", "yolox-nano", "--mirror", mirror.url, "--state-dir", str(state_dir))
    assert again.returncode == 0 and len(mirror.requests) == 1


def test_fetch_refuses_a_file_with_the_wrong_sha256(tmp_path, state_dir):
    fake_root = tmp_path / "mirror"
    (fake_root / "yolox_nano").mkdir(parents=True)
    (fake_root / "yolox_nano" / "yolox_nano.onnx").write_bytes(b"not the model")
    m = FileServer(fake_root)
    try:
        res = run_agent("models", "fetch", "yolox-nano", "--mirror", m.url, "--state-dir", str(state_dir))
    finally:
        m.close()
    assert res.returncode == 1
    assert "refused" in res.stderr and "Traceback" not in res.stderr
    assert not (state_dir / "models" / "yolox-nano" / "yolox_nano.onnx").exists()


def test_fetch_resumes_after_a_cut(mirror, state_dir):
    mirror.cut_once["yolox_nano/yolox_nano.onnx"] = 1_000_000
    with pytest.raises(models.ModelError, match=r"kept for resuming|sha256"):
        models.fetch("yolox-nano", state_dir, mirror=mirror.url)
    part = state_dir / "models" / "yolox-nano" / "yolox_nano.onnx.part"
    assert part.exists() and 0 < part.stat().st_size < YOLOX.stat().st_size
    path = models.fetch("yolox-nano", state_dir, mirror=mirror.url)
    assert path.read_bytes() == YOLOX.read_bytes()
    assert mirror.requests[-1][1] == f"bytes={1_000_000}-"


def test_fetch_offline_says_so(state_dir):
    res = run_agent(
        "models",
        "fetch",
        "yolox-nano",
        "--mirror",
        "http://127.0.0.1:9",
        "--state-dir",
        str(state_dir),
        env=agent_env(),
    )
    assert res.returncode == 1
    assert "cannot download" in res.stderr and "offline?" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_model_name(state_dir):
    with pytest.raises(models.ModelError, match="unknown model 'nope'"):
        models.resolve("nope", state_dir)
    with pytest.raises(models.ModelError, match="agent models fetch yolox-nano"):
        models.resolve("yolox-nano", state_dir)


def test_oversized_downloads_are_refused(mirror, state_dir):
    with pytest.raises(models.ModelError, match="more than"):
        models.download(f"{mirror.url}/yolox_nano/yolox_nano.onnx", state_dir / "m.onnx", "0" * 64,
                        max_bytes=1_000_000)
    assert not (state_dir / "m.onnx").exists()
