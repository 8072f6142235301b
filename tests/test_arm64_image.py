"""Flash and forget, proved on a real arm64 system: a Debian 12 arm64 root (debootstrap, run through
qemu-user-static and binfmt_misc) is prepared with `vigil-provision install --offline`, its first boot
runs in a network namespace with no network at all, and the installed arm64 agent (through the node's
launcher, as the node's `vigil` user) reports the person walking through a real clip with YOLOX-Nano.

Slow: emulated arm64 runs about a second per YOLOX-Nano frame at best, and a cold debootstrap takes
minutes (the root is cached between runs, see tests/arm64root.py). Marked `arm64` and `slow`; CI runs it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioning.cli import main as provision
from tests import arm64root
from tests.conftest import CLIP, DATA, shared

pytestmark = [pytest.mark.arm64, pytest.mark.slow, pytest.mark.timeout(2400)]
log = logging.getLogger(__name__)

NODE = "pole-0007"
FRAMES = 24  # a few dozen: emulation is slow


def offline_run(root: Path, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command inside ROOT with no network (a fresh network namespace holds only a down loopback)
    and with /proc mounted (privately: the mount ends with the namespace). Niced: emulation takes all
    the CPU it gets, and the suite's other worker runs tests with shutdown deadlines meanwhile."""
    script = f'mount -t proc proc "{root}/proc" && exec chroot "$@"'
    return subprocess.run(["nice", "-n", "15", "unshare", "--net", "--mount", "--fork", "sh", "-c", script, "sh",
                           *argv], capture_output=True, text=True, timeout=timeout)


def test_an_offline_arm64_image_boots_without_network_and_detects_a_person(tmp_path, capsys):
    clip = shared(CLIP)
    reason = arm64root.unavailable()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (./scripts/setup installs it)")
    timings: dict[str, float | bool] = {}
    started = time.monotonic()
    root, made = arm64root.bookworm_arm64(tmp_path / "root")
    timings.update(made)
    assert offline_run(root, str(root), "/bin/true", timeout=60).returncode == 0  # arm64 binaries run

    # The operator's side: a fleet with a release key, the node, and the offline image.
    fleet = tmp_path / "fleet"
    argv = ["--fleet", str(fleet)]
    assert provision([*argv, "init-ca", "--broker", "mqtts://broker.city.example:8883"]) == 0
    assert provision([*argv, "release", "init-key"]) == 0
    assert provision([*argv, "add-node", NODE, "--lat", "52.37", "--lon", "4.89"]) == 0
    capsys.readouterr()
    t = time.monotonic()
    code = provision([*argv, "install", NODE, "--root", str(root), "--offline", "--arch", "arm64",
                      "--models-from", str(DATA / "models")])
    out = capsys.readouterr()
    timings["install_offline_s"] = round(time.monotonic() - t, 1)
    assert code == 0, out.err + out.out
    assert "staged    release 0.1.0" in out.out and "pending  build the venv of release 0.1.0" in out.out
    assert "model     yolox-nano: in the agent wheel" in out.out and "model     centerface:" in out.out
    assert "python3-picamera2 is not in the image" in out.out  # what cannot be carried is reported
    slot = root / "opt/vigil/releases/0.1.0"
    assert (slot / "lock.txt").is_file() and not (slot / "venv").exists()  # nothing built on this x86 machine

    # First boot, by hand as the docs say, with no network: then once more (nothing left to do).
    t = time.monotonic()
    first = offline_run(root, str(root), "/opt/vigil/firstboot", timeout=1800)
    timings["firstboot_s"] = round(time.monotonic() - t, 1)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "release 0.1.0 installed" in first.stdout and not (root / "etc/vigil/install-plan.txt").exists()
    again = offline_run(root, str(root), "/opt/vigil/firstboot", timeout=600)
    assert again.returncode == 0 and "install: no changes" in again.stdout, again.stdout + again.stderr
    ort = next((slot / "venv/lib/python3.11/site-packages/onnxruntime/capi").glob("onnxruntime_pybind11_state*.so"))
    assert arm64root.elf_machine(ort) == 183  # the node runs AArch64 code, not this machine's

    # The installed agent, started the way the service starts it (launcher, vigil user), on a real clip.
    segment = root / "tmp" / "clip.mp4"  # 3 s where someone walks in (frames 290-320 of the clip)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", "29", "-i", str(clip), "-t", "3", "-an",
                    "-c:v", "libx264", "-preset", "veryfast", str(segment)], check=True, timeout=120)
    t = time.monotonic()
    run = offline_run(
        root, "--userspec=vigil:vigil", str(root), "/opt/vigil/launch", "--config", "/etc/vigil/config.toml",
        "--source", "/tmp/clip.mp4", "--model", "yolox-nano", "--no-realtime", "--no-motion-gate",
        "--max-frames", str(FRAMES), "--events-out", "/var/lib/vigil/events.jsonl", "--http", "off",
        timeout=1500,
    )
    timings["agent_s"] = round(time.monotonic() - t, 1)
    assert run.returncode == 0, run.stderr[-4000:]
    events = [json.loads(line) for line in (root / "var/lib/vigil/events.jsonl").read_text().splitlines()]
    people = [e for e in events if e["type"] == "object_appeared" and e["label"] == "person"]
    assert people, run.stderr[-4000:]
    # vigil.event/1.1 leaves the node out (the topic names it); a complete record would carry this node's id
    assert people[0]["schema"] == "vigil.event/1.1" and people[0].get("node", NODE) == NODE
    assert people[0]["model"]["name"] == "yolox-nano"
    assert people[0]["thumb"] is not None and "faces" in people[0]["thumb"]["redaction"]  # CenterFace was there
    assert "face redaction model unavailable" not in run.stderr
    timings["total_s"] = round(time.monotonic() - started, 1)
    log.warning("arm64 image test timings: %s", json.dumps(timings))
    print(f"\narm64 image test timings: {json.dumps(timings)}")
