"""The wheelhouse of a node: the agent wheel and every dependency, for the node's architecture and
Python, with a lock of exact versions and hashes. One builder for offline images (`install
--offline`) and signed releases (`release build`), so a node installed from an image and a node
updated over the air run the same bits.

pip does the resolving for the target, not for this machine (`pip download --platform …
--only-binary=:all: --python-version …`); the node then installs with `pip install --no-index
--require-hashes -r lock.txt`, so nothing it runs comes from anywhere but the wheelhouse.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.fetch import sha256_file
from agent.update.release import ARCHES
from provisioning.errors import ProvisionError

DEFAULT_PYTHON = "3.11"  # Debian 12, the base of Raspberry Pi OS bookworm
DEFAULT_GLIBC_MINOR = 36  # glibc 2.36 in bookworm: the newest manylinux tag its wheels may carry
WHEEL_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9_.]+?)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)

Log = Callable[[str], None]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Target:
    """A node's platform: Debian architecture, CPython version and glibc."""

    arch: str = "arm64"
    python: str = DEFAULT_PYTHON
    glibc_minor: int = DEFAULT_GLIBC_MINOR

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise ProvisionError(f"--arch {self.arch!r}: choose one of {', '.join(ARCHES)}")
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise ProvisionError(f"--python {self.python!r} must look like 3.11")

    @property
    def machine(self) -> str:
        return ARCHES[self.arch]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platforms(self) -> list[str]:
        """Every manylinux tag the node's glibc runs (pip does not widen a PEP 600 tag by itself)."""
        tags = [f"manylinux_2_{minor}_{self.machine}" for minor in range(self.glibc_minor, 16, -1)]
        tags.append(f"manylinux2014_{self.machine}")
        if self.machine == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags

    def pip_args(self) -> list[str]:
        args: list[str] = []
        for tag in self.platforms():
            args += ["--platform", tag]
        return [*args, "--only-binary=:all:", "--python-version", self.python, "--implementation", "cp",
                "--abi", self.abi]

    def describe(self) -> str:
        return f"linux {self.arch} ({self.machine}), CPython {self.python}, glibc ≤ 2.{self.glibc_minor}"


@dataclass
class Wheelhouse:
    folder: Path  # holds wheels/ and lock.txt
    agent_version: str
    packages: dict[str, str] = field(default_factory=dict)  # canonical name -> version

    @property
    def wheels(self) -> list[Path]:
        return sorted((self.folder / "wheels").glob("*.whl"))


def _pip(argv: list[str], what: str, log: Log) -> None:
    command = [sys.executable, "-m", "pip", *argv]
    log(f"{what}…")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if "is ignored" not in ln]
        raise ProvisionError(f"{what} failed: " + "\n".join(lines[-12:]))


def build_agent_wheel(source: Path, out: Path, log: Log) -> Path:
    """`pip wheel --no-deps` of a checkout: the agent as the node will install it."""
    if not (source / "pyproject.toml").is_file() or not (source / "agent").is_dir():
        raise ProvisionError(
            f"{source} is not a Vigil checkout (no pyproject.toml and agent/): give --agent WHEEL (or --source DIR)"
        )
    out.mkdir(parents=True, exist_ok=True)
    argv = ["wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)]
    _pip(argv, f"building the agent wheel from {source}", log)
    wheels = sorted(out.glob("vigil_agent-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise ProvisionError(f"pip built no vigil_agent wheel from {source}")
    return wheels[-1]


def wheel_version(wheel: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name."""
    match = WHEEL_NAME.match(wheel.name)
    if match is None:
        raise ProvisionError(f"{wheel.name} is not a wheel file name")
    return canonical(match["name"]), match["version"]


def build_wheelhouse(agent_wheel: Path, target: Target, dest: Path, log: Log) -> Wheelhouse:
    """Resolve and download everything `agent_wheel` needs on `target` into dest/wheels; write dest/lock.txt."""
    name, version = wheel_version(agent_wheel)
    if name != "vigil-agent":
        raise ProvisionError(f"{agent_wheel.name} is not a vigil-agent wheel")
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    _pip(["download", "--quiet", "--progress-bar", "off", *target.pip_args(), "--dest", str(wheels),
          str(agent_wheel)], f"downloading the dependencies for {target.describe()}", log)
    house = Wheelhouse(dest, version)
    lines = [
        f"# vigil-agent {version} for {target.describe()}: exact versions and hashes.",
        "# Installed on the node with: pip install --no-index --find-links wheels --require-hashes -r lock.txt",
    ]
    for wheel in house.wheels:
        project, pinned = wheel_version(wheel)
        if project in house.packages:
            raise ProvisionError(f"two wheels of {project} in the wheelhouse ({house.packages[project]}, {pinned})")
        house.packages[project] = pinned
        lines.append(f"{project}=={pinned} \\\n    --hash=sha256:{sha256_file(wheel)}")
    if "vigil-agent" not in house.packages:
        raise ProvisionError("pip did not put the agent wheel into the wheelhouse")
    (dest / "lock.txt").write_text("\n".join(lines) + "\n")
    log(f"wheelhouse: {len(house.packages)} packages for {target.describe()}")
    return house
