"""`agent models list/fetch` against a local HTTP server serving ../shared/data/models, and the models that
ship with Vigil (vigil-synth, YOLOX-Nano) working on a fresh clone with no network at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import models
from agent.detect import load_detector
from tests.conftest import CENTERFACE, CLIP, DATA, ROOT, agent_env, read_events, run_agent, shared
from tests.fileserver import FileServer


@pytest.fixture
def mirror():
    shared(CENTERFACE)
    m = FileServer(DATA / "models")
    yield m
    m.close()


def test_list_shows_shipped_and_fetchable_models(state_dir):
    res = run_agent("models", "list", "--json", "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    for name in ("vigil-synth", "yolox-nano"):
        assert rows[name]["shipped"] is True and rows[name]["installed"], rows[name]
        assert Path(rows[name]["installed"]).is_relative_to(ROOT / "models")
    assert rows["yolox-nano"]["sha256"] == "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14"
    assert rows["centerface"]["shipped"] is False and rows["centerface"]["installed"] is None
    text = run_agent("models", "list", "--state-dir", str(state_dir)).stdout
    assert "yolox-nano     shipped with Vigil" in text and "centerface     not installed" in text


def test_the_shipped_yolox_nano_is_the_upstream_file_with_its_licence():
    shipped = ROOT / "models" / "yolox-nano"
    assert models.sha256_file(shipped / "yolox_nano.onnx") == models.entry("yolox-nano").sha256
    assert (
        "Apache License" in (shipped / "LICENSE").read_text()
        and "Version 2.0" in (shipped / "LICENSE").read_text()
    )
    notice = (shipped / "NOTICE").read_text()
    assert "Megvii" in notice and models.entry("yolox-nano").sha256 in notice
    assert models.resolve("yolox-nano", None) == shipped / "yolox_nano.onnx"
    assert load_detector(shipped / "yolox_nano.onnx").card.name == "yolox-nano"  # card from the manifest


def test_a_damaged_shipped_model_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "models"
    (fake / "yolox-nano").mkdir(parents=True)
    (fake / "manifest.toml").write_bytes((ROOT / "models" / "manifest.toml").read_bytes())
    (fake / "yolox-nano" / "yolox_nano.onnx").write_bytes(b"bit rot")
    monkeypatch.setenv("VIGIL_SHIPPED_MODELS", str(fake))
    with pytest.raises(models.ModelError, match="sha256 differs"):
        models.resolve("yolox-nano", None)


def test_fetch_verifies_installs_and_the_agent_uses_it(mirror, state_dir):
    res = run_agent(
        "models", "fetch", "centerface", "--mirror", mirror.url, "--state-dir", str(state_dir), "--progress"
    )
    assert res.returncode == 0, res.stderr
    installed = state_dir / "models" / "centerface" / "centerface.onnx"
    assert installed.read_bytes() == CENTERFACE.read_bytes()
    assert "100%" in res.stderr  # progress bar
    assert json.loads(installed.with_suffix(".card.json").read_text())["name"] == "centerface"
    assert models.resolve("centerface", state_dir) == installed
    # fetching again is a no-op
    again = run_agent("models", "fetch", "centerface", "--mirror", mirror.url, "--state-dir", str(state_dir))
    assert again.returncode == 0 and len(mirror.requests) == 1
    # a shipped model needs no download at all
    shipped = run_agent(
        "models", "fetch", "yolox-nano", "--mirror", mirror.url, "--state-dir", str(state_dir)
    )
    assert shipped.returncode == 0 and len(mirror.requests) == 1


def test_fetch_refuses_a_file_with_the_wrong_sha256(tmp_path, state_dir):
    fake_root = tmp_path / "mirror"
    (fake_root / "centerface").mkdir(parents=True)
    (fake_root / "centerface" / "centerface.onnx").write_bytes(b"not the model")
    m = FileServer(fake_root)
    try:
        res = run_agent("models", "fetch", "centerface", "--mirror", m.url, "--state-dir", str(state_dir))
    finally:
        m.close()
    assert res.returncode == 1
    assert "refused" in res.stderr and "Traceback" not in res.stderr
    assert not (state_dir / "models" / "centerface" / "centerface.onnx").exists()


def test_fetch_resumes_after_a_cut(mirror, state_dir):
    mirror.cut_once["centerface/centerface.onnx"] = 1_000_000
    with pytest.raises(models.ModelError, match=r"kept for resuming|sha256"):
        models.fetch("centerface", state_dir, mirror=mirror.url)
    part = state_dir / "models" / "centerface" / "centerface.onnx.part"
    assert part.exists() and 0 < part.stat().st_size < CENTERFACE.stat().st_size
    path = models.fetch("centerface", state_dir, mirror=mirror.url)
    assert path.read_bytes() == CENTERFACE.read_bytes()
    assert mirror.requests[-1][1] == f"bytes={1_000_000}-"


def test_fetch_offline_says_so(state_dir):
    res = run_agent(
        "models",
        "fetch",
        "centerface",
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
    with pytest.raises(models.ModelError, match="agent models fetch centerface"):
        models.resolve("centerface", state_dir)


def test_oversized_downloads_are_refused(mirror, state_dir):
    with pytest.raises(models.ModelError, match="more than"):
        models.download(
            f"{mirror.url}/centerface/centerface.onnx", state_dir / "m.onnx", "0" * 64, max_bytes=1_000_000
        )
    assert not (state_dir / "m.onnx").exists()


def test_a_fresh_clone_detects_real_people_with_no_network(state_dir):
    """`agent --simulate` on a real video, no --model and nothing fetched, in a network namespace with no
    network at all: the shipped YOLOX-Nano finds the people."""
    clip = shared(CLIP)
    if (
        shutil.which("unshare") is None
        or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode
    ):
        pytest.skip("unshare -n is not permitted here (needs root or user namespaces); CI runs as root")
    res = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            "-m",
            "agent",
            "--simulate",
            "--source",
            str(clip),
            "--no-realtime",
            "--max-frames",
            "400",
            "--state-dir",
            str(state_dir),
            "--http",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=agent_env(),
    )
    assert res.returncode == 0, res.stderr
    events = read_events(res.stdout)
    people = [e for e in events if e["type"] == "object_appeared" and e["label"] == "person"]
    assert people and all(e["model"]["name"] == "yolox-nano" for e in events), res.stderr[-2000:]
    assert "only knows the synthetic scene" not in res.stderr
    assert not [p for p in state_dir.glob("models/**/*") if p.is_file()]  # nothing was fetched
