"""Signed releases: the fleet's release key, `vigil-provision release build` (agent wheel, wheelhouse for
the node's platform, hashed lock, signed manifest), and a real agent refusing every release it must not
install (unsigned, signed by another key, tampered with, another architecture, a downgrade, too big),
with an error reply and nothing changed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from agent.update import slots
from agent.update.release import ReleaseError, Trusted, check_compatible, open_release
from provisioning.cli import main as provision
from tests.agent_harness import AgentHarness, Operator
from tests.fileserver import FileServer
from tests.releases import Releases, signed_by_another_key, tampered, unsigned

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> Releases:
    return Releases(tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="module")
def good(releases):
    return releases.build("0.2.0")


def test_init_key_is_private_and_never_replaced_and_bundles_carry_it(tmp_path, capsys):
    fleet = tmp_path / "fleet"
    assert provision(["--fleet", str(fleet), "init-ca", "--broker", "mqtts://broker.example:8883"]) == 0
    assert provision(["--fleet", str(fleet), "add-node", "pole-1"]) == 0
    assert not (fleet / "nodes/pole-1/release-key.pub").exists()
    assert provision(["--fleet", str(fleet), "release", "init-key"]) == 0
    key = fleet / "release" / "release.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    before = key.read_bytes()
    capsys.readouterr()
    assert provision(["--fleet", str(fleet), "release", "init-key"]) == 1
    assert "never replaces a release key" in capsys.readouterr().err and key.read_bytes() == before
    assert provision(["--fleet", str(fleet), "add-node", "pole-1", "--update"]) == 0
    pub = (fleet / "release" / "release.pub").read_bytes()
    assert (fleet / "nodes/pole-1/release-key.pub").read_bytes() == pub
    assert provision(["--fleet", str(fleet), "add-node", "pole-2"]) == 0
    assert (fleet / "nodes/pole-2/release-key.pub").read_bytes() == pub


def test_release_build_signs_a_manifest_of_the_wheelhouse(releases, good, tmp_path, capsys):
    wheel = tmp_path / "wheel"
    with tarfile.open(good.path) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("wheels/vigil_agent-"))
        wheel.mkdir()
        (wheel / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    agent_wheel = next(wheel.iterdir())
    out = tmp_path / "out"
    argv = ["--fleet", str(releases.fleet.root), "release", "build", "--arch", "amd64", "--out", str(out),
            "--agent", str(agent_wheel)]
    assert provision(argv) == 0
    printed = capsys.readouterr().out
    path = out / "vigil-agent-0.2.0-amd64.tar"
    summary = json.loads(path.with_suffix(".json").read_text())
    assert summary["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and summary["sha256"] in printed
    checked = open_release(path, Trusted.load(releases.public_key))  # the signature verifies
    manifest = checked.manifest
    assert manifest["version"] == "0.2.0" and manifest["arch"] == "amd64" and manifest["python"] == "3.11"
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    assert set(manifest["files"]) == set(members) - {"manifest.json", "manifest.json.sig"}
    for name, meta in manifest["files"].items():
        assert hashlib.sha256(members[name]).hexdigest() == meta["sha256"] and len(members[name]) == meta["size"]
    lock = members["lock.txt"].decode()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+) \\$", lock, re.M))
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", lock)
    wheels = {n: d for n, d in members.items() if n.startswith("wheels/")}
    assert sorted(hashes) == sorted(hashlib.sha256(d).hexdigest() for d in wheels.values())
    assert pins == manifest["packages"] and pins["vigil-agent"] == "0.2.0"
    assert {"onnxruntime", "opencv-python-headless", "numpy", "paho-mqtt", "cryptography"} <= set(pins)
    onnx = tuple(int(x) for x in pins["onnx"].split(".")[:2])
    assert onnx >= (1, 16)  # CVE-2024-27318
    assert all(n.endswith(("none-any.whl", "x86_64.whl")) for n in wheels)


def test_the_checks_a_release_must_pass(releases, good, tmp_path):
    trusted = Trusted.load(releases.public_key)
    checked = open_release(good.path, trusted)
    check_compatible(checked, requested="0.2.0", running="0.1.0", force=False)
    with pytest.raises(ReleaseError, match="a downgrade is refused unless forced"):
        check_compatible(checked, requested="0.2.0", running="0.10.0", force=False)
    check_compatible(checked, requested="0.2.0", running="0.10.0", force=True)
    with pytest.raises(ReleaseError, match=r"the request says 0\.3\.0"):
        check_compatible(checked, requested="0.3.0", running="0.1.0", force=False)
    path, _ = unsigned(good, tmp_path / "unsigned.tar")
    with pytest.raises(ReleaseError, match="not signed"):
        open_release(path, trusted)
    path, _ = signed_by_another_key(good, tmp_path / "other.tar")
    with pytest.raises(ReleaseError, match="does not verify against this fleet's release key"):
        open_release(path, trusted)


# -- a real agent refusing releases over MQTT ---------------------------------------------------------------


@pytest.fixture(scope="module")
def node(module_broker, releases, tmp_path_factory):
    folder = tmp_path_factory.mktemp("node")
    config = {"update": {"releases_dir": str(folder / "releases"), "public_key": str(releases.public_key)}}
    with AgentHarness(folder / "state", broker=module_broker.url, config=config) as harness:
        yield harness


@pytest.fixture(scope="module")
def operator(module_broker, node):
    op = Operator(module_broker.url)
    yield op
    op.close()


def refused(node: AgentHarness, operator: Operator, args: dict) -> str:
    """Send the update; it must be refused with nothing changed and the agent still analysing."""
    frames = node.running.pipeline.stats.frames
    reply = operator.request("agent/update", args, timeout=120)
    assert reply["status"] == "error", reply
    layout = slots.Layout(node.agent.config.update.releases_dir)
    assert slots.current(layout) is None and not [p for p in layout.releases.glob("[0-9]*")]
    assert node.wait_records(lambda _rs: node.running.pipeline.stats.frames > frames + 5, 20)
    assert node.rc is None and not node.agent.stop_event.is_set()
    return reply["message"]


def test_tampered_unsigned_and_foreign_releases_are_refused(node, operator, good, tmp_path):
    for make, expected in (
        (tampered, "does not match the signed manifest"),
        (unsigned, "is not signed"),
        (signed_by_another_key, "does not verify against this fleet's release key"),
    ):
        path, sha = make(good, tmp_path / f"{make.__name__}.tar")
        message = refused(node, operator, {"path": str(path), "sha256": sha, "version": "0.2.0"})
        assert expected in message and "the running release 0.1.0 stays" in message
    message = refused(node, operator, {"path": str(good.path), "sha256": "0" * 64, "version": "0.2.0"})
    assert f"has sha256 {good.sha256}, expected" in message
    actions = [e["action"] for e in node.stage("health").privacy.audit.entries()]
    assert actions.count("agent.update_refused") >= 4


def test_another_architecture_and_a_downgrade_are_refused(node, operator, releases):
    arm = releases.build("0.2.0", arch="arm64")
    message = refused(node, operator, {"path": str(arm.path), "sha256": arm.sha256, "version": "0.2.0"})
    assert "built for arm64, this node is amd64" in message
    old = releases.build("0.0.9")
    message = refused(node, operator, {"path": str(old.path), "sha256": old.sha256, "version": "0.0.9"})
    assert "older than the running 0.1.0" in message and '"force": true' in message


def test_a_release_larger_than_the_cap_is_not_downloaded(node, operator, good):
    server = FileServer(good.path.parent)
    config = node.agent.config  # frozen: a node configured with this cap gets a config of its own
    capped = config.update.model_copy(update={"max_bytes": 50 * 1024 * 1024})
    node.agent.use_config(config.model_copy(update={"update": capped}))
    try:
        message = refused(node, operator, {"url": server.url_for(good.path.name), "sha256": good.sha256,
                                           "version": "0.2.0"})
    finally:
        node.agent.use_config(config)
        server.close()
    assert "more than the 52428800 allowed" in message
    assert not list((Path(node.agent.config.update.releases_dir) / ".incoming").glob("*.part"))


def test_bad_requests_get_an_error_reply(node, operator):
    reply = operator.request("agent/update", {"sha256": "0" * 64, "version": "0.2.0"})
    assert reply["status"] == "error" and "give exactly one of url or path" in reply["message"]
    reply = operator.request("agent/update", {"path": "/nope.tar", "sha256": "0" * 64, "version": "../x"})
    assert reply["status"] == "error" and "args.version" in reply["message"]
    reply = operator.request("agent/update", {"path": "/nope.tar", "sha256": "0" * 64, "version": "0.2.0"})
    assert reply["status"] == "error" and "release file not found on the node" in reply["message"]


def test_no_update_while_the_running_release_is_on_probation(node, operator, good):
    layout = slots.Layout(node.agent.config.update.releases_dir)
    slot = layout.slot("0.1.0")
    (slot / "venv" / "bin").mkdir(parents=True)
    (slot / "venv" / "bin" / "agent").write_text("")
    slots.mark_complete(slot, {"version": "0.1.0"})
    slots.switch(layout, "0.1.0")
    with slots.locked_state(layout) as state:
        state["probation"] = {"version": "0.1.0", "from": "0.0.9", "timeout_s": 600, "starts": 1}
    try:
        reply = operator.request("agent/update", {"path": str(good.path), "sha256": good.sha256, "version": "0.2.0"})
        assert reply["status"] == "error" and "still on probation" in reply["message"]
        assert slots.current(layout) == "0.1.0" and not layout.slot("0.2.0").exists()
    finally:
        shutil.rmtree(layout.releases)
