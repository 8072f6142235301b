"""`model/update` against a real agent, a real Mosquitto and a real HTTP server that serves models
(with Range support, a cut connection on demand and a gate to hold a download open)."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

import onnx
import pytest

from agent.control.model_update import DOWNLOAD_FAILED as GENERIC
from tests.agent_harness import AgentHarness, Operator
from tests.conftest import DEFAULT_MODEL
from tests.fileserver import FileServer

CARD = {k: v for k, v in json.loads(DEFAULT_MODEL.with_suffix(".card.json").read_text()).items() if k != "sha256"}


def variant(tag: str) -> bytes:
    """The shipped detector with another doc string: another file (another sha256), the same network."""
    model = onnx.load(str(DEFAULT_MODEL))
    model.doc_string = f"vigil-synth retrained ({tag})"
    return model.SerializeToString()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def node(module_broker, tmp_path_factory):
    state = tmp_path_factory.mktemp("node") / "state"
    config = {"control": {"model_probation_frames": 15, "model_probation_timeout_s": 60}}
    with AgentHarness(state, broker=module_broker.url, config=config) as harness:
        # the probation compares with what the running model found: let it find something first
        assert harness.wait_records(lambda rs: any(r.get("type") == "object_appeared" for r in rs), 30)
        yield harness


@pytest.fixture(scope="module")
def operator(module_broker, node):
    op = Operator(module_broker.url)
    yield op
    op.close()


def running_sha(node: AgentHarness) -> str:
    return node.running.pipeline.detector.sha256


def test_wrong_sha256_is_refused_and_the_old_model_keeps_running(node, operator, files):
    data = variant("wrong-digest")
    files.files["wrong.onnx"] = data
    before, frames = running_sha(node), node.running.pipeline.stats.frames
    reply = operator.request("model/update", {"url": files.url_for("wrong.onnx"), "sha256": "0" * 64, "card": CARD})
    assert reply["status"] == "error" and reply["message"] == GENERIC and sha(data) not in reply["message"]
    assert running_sha(node) == before
    assert node.wait_records(lambda _rs: node.running.pipeline.stats.frames > frames + 10, 10)  # still analysing
    assert not [p.name for p in (node.running.state_dir / "models" / "updates").iterdir() if "wrong" in p.name]


def imported(node: AgentHarness, name: str, data: bytes) -> Path:
    """A file put into the node's import folder (where model/update takes local files from)."""
    path = node.stage("control").models.import_dir / name
    path.write_bytes(data)
    return path


def test_a_file_that_does_not_load_is_refused(node, operator):
    garbage = os.urandom(4096)
    imported(node, "broken.onnx", garbage)
    before = running_sha(node)
    reply = operator.request("model/update", {"path": "broken.onnx", "sha256": sha(garbage), "card": CARD})
    assert reply["status"] == "error" and "does not load" in reply["message"]
    assert running_sha(node) == before


def test_a_model_that_knows_none_of_the_classes_is_refused(node, operator, files):
    data = variant("other-labels")
    files.files["pets.onnx"] = data
    pets_card = {**CARD, "labels": ["dog", "cat", "bird"]}  # same outputs, other names: a pet detector
    before = running_sha(node)
    args = {"url": files.url_for("pets.onnx"), "sha256": sha(data), "card": pets_card}
    reply = operator.request("model/update", args)
    assert reply["status"] == "error" and "knows none of detect.classes" in reply["message"], reply
    assert running_sha(node) == before


def test_a_model_that_finds_nothing_is_rolled_back(node, operator, files):
    data = variant("blind")
    files.files["blind.onnx"] = data
    blind_card = {**CARD, "input": {**CARD["input"], "scale": 0.0}}  # feeds the network an empty image
    before = running_sha(node)
    reply = operator.request(
        "model/update", {"url": files.url_for("blind.onnx"), "sha256": sha(data), "card": blind_card}, timeout=90
    )
    assert reply["status"] == "error" and "rolled back" in reply["message"] and "produced nothing" in reply["message"]
    assert running_sha(node) == before and node.running.detector.sha256 == before
    actions = [e["action"] for e in node.stage("health").privacy.audit.entries()]
    assert "model.rolled_back" in actions


def test_only_one_update_runs_at_a_time(node, operator, files):
    data = variant("slow")
    files.files["slow.onnx"] = data
    files.gate.clear()  # the server holds the download
    try:
        operator.publish("model/update", json.dumps(
            {"id": "slow-1", "args": {"url": files.url_for("slow.onnx"), "sha256": sha(data), "card": CARD}}).encode())
        assert operator.sub.wait_for(lambda _ms: node.stage("control").models.busy, 10)
        slow = {"url": files.url_for("slow.onnx"), "sha256": sha(data), "card": CARD}
        second = operator.request("model/update", slow)
        assert second["status"] == "error" and "already in progress" in second["message"]
        assert operator.request("ping")["status"] == "ok"  # other commands are served meanwhile
    finally:
        files.gate.set()
    assert operator.sub.wait_for(lambda _ms: any(r["id"] == "slow-1" for r in operator.replies()), 90)
    assert next(r for r in operator.replies() if r["id"] == "slow-1")["status"] == "ok"


def test_a_cut_download_resumes_and_the_new_model_takes_over(node, operator, files):
    data = variant("resumed")
    files.files["resumed.onnx"] = data
    files.cut_once["resumed.onnx"] = None
    args = {"url": files.url_for("resumed.onnx"), "sha256": sha(data), "card": CARD, "name": "synth-v2"}
    first = operator.request("model/update", args)
    assert first["status"] == "error" and first["message"] == GENERIC  # the same words as any failure
    before = running_sha(node)
    reply = operator.request("model/update", args, actor="ml-team", timeout=90)
    assert reply["status"] == "ok", reply
    ranges = [r for _, r in files.requests if r]
    assert ranges and ranges[-1].startswith("bytes=") and ranges[-1] != "bytes=0-"
    assert running_sha(node) == sha(data) != before
    assert reply["data"]["model"]["sha256"] == sha(data) and reply["data"]["runs"] >= 15
    assert node.wait_records(lambda rs: any(r.get("model", {}).get("sha256") == sha(data) for r in rs
                                            if r.get("type") == "object_appeared"), 30)
    kept = tomllib.loads((node.running.state_dir / "config-overlay.toml").read_text())["set"]["detect.model"]
    assert Path(kept).is_file() and Path(kept).name.startswith("synth-v2-")
    change = [e for e in node.stage("health").privacy.audit.entries() if e["action"] == "model.change"][-1]
    assert "ml-team" in change["actor"] and change["details"]["to"]["sha256"] == sha(data)
    again = operator.request("model/update", args)
    assert again["status"] == "ok" and "already running" in again["message"]


def test_an_update_from_a_file_on_the_node(node, operator):
    data = variant("from-path")
    path = imported(node, "pushed.onnx", data)
    (path.parent / "pushed.card.json").write_text(json.dumps(CARD))
    reply = operator.request("model/update", {"path": str(path), "sha256": sha(data)}, timeout=90)
    assert reply["status"] == "ok", reply
    assert running_sha(node) == sha(data)
    status = operator.request("status")["data"]
    assert status["versions"]["model_sha256"] == sha(data)
