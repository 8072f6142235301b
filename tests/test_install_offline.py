"""`vigil-provision install NODE --root ROOT --offline` into a Raspberry Pi OS-like tree: what lands in the
image (a signed release staged as the first slot, the models, the launcher and first-boot command, the
plan), that a second run changes nothing, and the images it refuses before writing anything. The
image booting for real is tests/test_arm64_image.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.update import slots
from provisioning.cli import main as provision
from tests.conftest import CENTERFACE, DATA, shared
from tests.test_install import tree

pytestmark = pytest.mark.timeout(600)

DPKG = "".join(
    f"Package: {name}\nStatus: install ok installed\nArchitecture: {arch}\nVersion: 1\n\n"
    for name, arch in (("libc6", "{arch}"), ("python3", "{arch}"), ("python3-venv", "{arch}"),
                       ("ca-certificates", "all"), ("fake-hwclock", "{arch}"))
)


def image(root: Path, *, arch: str = "arm64", python: str = "3.11", venv: bool = True) -> Path:
    """The parts of a Raspberry Pi OS (64-bit) root filesystem the offline installer looks at."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:pi\nvideo:x:44:pi\ngpio:x:997:pi\npi:x:1000:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "var/lib/dpkg").mkdir(parents=True)
    status = DPKG.replace("{arch}", arch)
    if not venv:
        status = status.replace("Package: python3-venv\n", "Package: python3-venv-not\n")
    (root / "var/lib/dpkg/status").write_text(status)
    (root / "usr/bin").mkdir(parents=True)
    (root / f"usr/bin/python{python}").write_text("")
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text("[all]\n")
    return root


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    shared(CENTERFACE)
    fleet = tmp_path_factory.mktemp("fleet") / "city"
    assert provision(["--fleet", str(fleet), "init-ca", "--broker", "mqtts://broker.city.example:8883"]) == 0
    assert provision(["--fleet", str(fleet), "release", "init-key"]) == 0
    assert provision(["--fleet", str(fleet), "add-node", "pole-1", "--camera", "camera-module-3"]) == 0
    return fleet


def offline(fleet: Path, root: Path, *extra: str, node: str = "pole-1") -> int:
    return provision(["--fleet", str(fleet), "install", node, "--root", str(root), "--offline",
                      "--models-from", str(DATA / "models"), *extra])


def test_an_offline_image_carries_everything_and_a_second_run_changes_nothing(fleet, tmp_path, capsys):
    root = image(tmp_path / "sdcard")
    assert offline(fleet, root) == 0
    out = capsys.readouterr().out
    assert "pending  build the venv of release 0.1.0" in out
    assert "python3-picamera2 is not in the image" in out  # cannot be carried: reported
    slot = root / "opt/vigil/releases/0.1.0"
    manifest = slots.read_manifest(slot)
    assert manifest["arch"] == "arm64" and manifest["python"] == "3.11"
    for name, meta in manifest["files"].items():  # every wheel and the lock, as signed
        assert slots.sha256_file(slot / name) == meta["sha256"]
    wheels = [n for n in manifest["files"] if n.startswith("wheels/")]
    assert all(n.endswith(("none-any.whl", "aarch64.whl")) for n in wheels), wheels
    assert not (slot / "venv").exists() and not slots.is_complete(slot)  # built at first boot, on the node
    model = root / "var/lib/vigil/models/centerface/centerface.onnx"
    assert model.read_bytes() == CENTERFACE.read_bytes()
    assert json.loads(model.with_suffix(".card.json").read_text())["name"] == "centerface"
    assert "model     yolox-nano: in the agent wheel" in out
    assert os.access(root / "opt/vigil/launch", os.X_OK) and (root / "opt/vigil/lib/vigil_slots.py").is_file()
    firstboot = (root / "opt/vigil/firstboot").read_text()
    assert "install.py --bundle /etc/vigil --offline" in firstboot
    assert os.readlink(root / "opt/vigil/current") == "releases/current"
    assert (root / "etc/vigil/release-key.pub").read_bytes() == (fleet / "release/release.pub").read_bytes()
    unit = (root / "etc/systemd/system/vigil-firstboot.service").read_text()
    assert "ExecStart=/opt/vigil/firstboot" in unit
    plan = (root / "etc/vigil/install-plan.txt").read_text()
    assert "apt-get" not in plan and "pip install" not in plan and "release 0.1.0" in plan
    if os.geteuid() == 0:
        vigil = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines()
                     if line.startswith("vigil:"))
        assert (slot.stat().st_uid, model.stat().st_uid) == (int(vigil[2]), int(vigil[2]))

    before = tree(root)
    assert offline(fleet, root) == 0
    out = capsys.readouterr().out
    assert "unchanged release 0.1.0" in out and "install: no changes" in out
    assert "building the release" not in out  # the fleet's release is reused: every card gets the same bits
    assert tree(root) == before


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: image(root, arch="amd64"), "is a Debian amd64 system but the release would be for arm64"),
        (lambda root: image(root, python="3.13"), "has no /usr/bin/python3.11 (it has: python3.13)"),
        (lambda root: image(root, venv=False), "lacks python3-venv"),
    ],
)
def test_images_the_release_would_not_run_on_are_refused(fleet, tmp_path, capsys, make, expected):
    root = make(tmp_path / "sdcard")
    before = tree(root)
    assert offline(fleet, root) == 1
    assert expected in capsys.readouterr().err
    assert tree(root) == before


def test_an_offline_node_needs_the_fleet_release_key_in_its_bundle(tmp_path, capsys):
    fleet = tmp_path / "fleet"
    assert provision(["--fleet", str(fleet), "init-ca", "--broker", "mqtts://broker.city.example:8883"]) == 0
    assert provision(["--fleet", str(fleet), "add-node", "pole-9"]) == 0
    root = image(tmp_path / "sdcard")
    before = tree(root)
    assert offline(fleet, root, node="pole-9") == 1
    assert "release init-key" in capsys.readouterr().err
    assert provision(["--fleet", str(fleet), "release", "init-key"]) == 0
    capsys.readouterr()
    assert offline(fleet, root, node="pole-9") == 1
    assert "does not carry the fleet's release key" in capsys.readouterr().err
    assert tree(root) == before
