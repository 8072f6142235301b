#!/usr/bin/env python3
"""Install a Vigil node bundle on a Raspberry Pi, or into a directory tree with --root.

This file is copied into every bundle (beside install.sh) and must run on a fresh Raspberry Pi OS
with nothing but python3, so it uses the standard library only, and it is one file on purpose (the
bundle carries it alone; nothing to import beside it), which is why it is longer than our other
modules. Every step first looks at what is
there and changes only what is not right yet, so running it twice is safe and the second run says
"no changes". With --root DIR nothing outside DIR is touched: files, the `vigil` user (as
passwd/group entries) and the service enablement (as a symlink) are written into DIR, and what
needs the node itself (apt, the venv, the agent) is written to DIR/etc/vigil/install-plan.txt and
done on first boot by vigil-firstboot.service, so the same script prepares SD card images.

    sudo ./install.sh [--agent WHEEL|DIR|REQUIREMENT] [--skip-apt]
    ./install.sh --root /mnt/sdcard-rootfs [--agent dist/vigil_agent-0.1.0-py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

USER = "vigil"
CONFIG_DIR = "/etc/vigil"
STATE_DIR = "/var/lib/vigil"
OPT_DIR = "/opt/vigil"
VENV_DIR = "/opt/vigil/venv"
DIST_DIR = "/opt/vigil/dist"
SERVICE = "vigil-agent.service"
FIRSTBOOT_SERVICE = "vigil-firstboot.service"
PLAN_FILE = "/etc/vigil/install-plan.txt"
AGENT_MARKER = "/opt/vigil/venv/.vigil-agent-source"
# Release slots (agent.update.slots): the launcher starts the current one and rolls back a failed update.
RELEASES_DIR = "/opt/vigil/releases"
LIB_DIR = "/opt/vigil/lib"
LAUNCHER = "/opt/vigil/launch"
FIRSTBOOT = "/opt/vigil/firstboot"
CURRENT_LINK = "/opt/vigil/current"
SLOTS_MODULE = "vigil_slots.py"
# camera (video, dma_heap), serial ports of the modem (dialout), modem power/reset lines (gpio)
EXTRA_GROUPS = ("video", "dialout", "gpio")
BASE_PACKAGES = ("python3", "python3-venv", "python3-numpy", "ca-certificates", "fake-hwclock")
CAMERA_PACKAGES = ("python3-picamera2",)
BOOT_CONFIGS = ("/boot/firmware/config.txt", "/boot/config.txt")
WATCHDOG_DTPARAM = "dtparam=watchdog=on"


@dataclass(frozen=True)
class BundleFile:
    """A bundle file: kept under /etc/vigil (so /etc/vigil is itself a re-runnable bundle) and, for
    system files, also placed where systemd or udev read it."""

    name: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    system_path: str | None = None
    restarts_agent: bool = True
    optional: bool = False  # only in bundles of fleets that have it (release-key.pub before `release init-key`)


BUNDLE_FILES: tuple[BundleFile, ...] = (
    BundleFile("config.toml", 0o640, group=USER),
    BundleFile("ca.crt"),
    BundleFile("node.crt"),
    BundleFile("node.key", 0o600, owner=USER, group=USER),
    BundleFile("audit.key", 0o640, group=USER),  # the audit chain's key: the agent reads it, cannot change it
    BundleFile("node.json", restarts_agent=False),
    BundleFile("install.py", 0o755, restarts_agent=False),
    BundleFile("install.sh", 0o755, restarts_agent=False),
    BundleFile(SLOTS_MODULE, system_path=f"{LIB_DIR}/{SLOTS_MODULE}", restarts_agent=False),
    BundleFile("release-key.pub", restarts_agent=False, optional=True),
    BundleFile("system/vigil-agent.service", system_path=f"/etc/systemd/system/{SERVICE}"),
    BundleFile(
        "system/vigil-firstboot.service",
        system_path=f"/etc/systemd/system/{FIRSTBOOT_SERVICE}",
        restarts_agent=False,
    ),
    BundleFile(
        "system/70-vigil-modem.rules",
        system_path="/etc/udev/rules.d/70-vigil-modem.rules",
        restarts_agent=False,
    ),
    BundleFile(
        "system/journald-vigil.conf",
        system_path="/etc/systemd/journald.conf.d/vigil.conf",
        restarts_agent=False,
    ),
    BundleFile(
        "system/watchdog-vigil.conf",
        system_path="/etc/systemd/system.conf.d/vigil-watchdog.conf",
        restarts_agent=False,
    ),
)


class InstallError(Exception):
    """Something the person running the installer must fix; printed without a traceback."""


# -- running commands ------------------------------------------------------------------------------


class Runner:
    """Runs system commands on the node; tests pass a recording fake."""

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        print("  $ " + " ".join(argv), flush=True)
        try:
            subprocess.run(list(argv), check=True, env={**os.environ, **(env or {})})
        except FileNotFoundError:
            raise InstallError(f"{argv[0]} is not installed") from None
        except subprocess.CalledProcessError as exc:
            raise InstallError(f"`{' '.join(argv)}` failed with exit status {exc.returncode}") from None

    def check(self, argv: Sequence[str]) -> bool:
        try:
            return subprocess.run(list(argv), capture_output=True).returncode == 0
        except FileNotFoundError:
            return False

    def systemd_running(self) -> bool:
        return Path("/run/systemd/system").is_dir()


# -- small file helpers (stdlib only: this file runs without the provisioning package) --------------


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.vigil-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_table(path: Path) -> list[list[str]]:
    """/etc/passwd-style file as rows of fields (missing file: no rows)."""
    try:
        return [
            line.split(":") for line in path.read_text().splitlines() if line and not line.startswith("#")
        ]
    except FileNotFoundError:
        return []


def write_table(path: Path, rows: list[list[str]], mode: int) -> None:
    """Rewrite a passwd-style table, keeping the owner and group it had (/etc/shadow is root:shadow)."""
    try:
        st = path.stat()
        owner: tuple[int, int] | None = (st.st_uid, st.st_gid)
    except FileNotFoundError:
        owner = None
    write_atomic(path, "".join(":".join(r) + "\n" for r in rows).encode(), mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)


def dpkg_installed(root: Path) -> set[str]:
    """Packages dpkg lists as installed under `root` (a real system or an SD card image)."""
    installed: set[str] = set()
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except FileNotFoundError:
        return installed
    for stanza in text.split("\n\n"):
        name = status = None
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Status: "):
                status = line[8:].strip()
        if name and status and status.endswith(" installed"):
            installed.add(name)
    return installed


def source_fingerprint(spec: str) -> str:
    """What identifies the agent build being installed, so an unchanged one is not reinstalled."""
    path = Path(spec)
    digest = hashlib.sha256()
    if path.is_file():
        digest.update(path.read_bytes())
        return f"file sha256:{digest.hexdigest()} {path.name}"
    if path.is_dir():
        for sub in sorted(path.rglob("*")):
            rel = sub.relative_to(path).as_posix()
            if not sub.is_file() or any(part.startswith(".") or part == "__pycache__" for part in sub.parts):
                continue
            if rel.split("/")[0] not in ("agent", "provisioning", "models", "schema", "pyproject.toml"):
                continue
            digest.update(rel.encode() + b"\0" + sub.read_bytes() + b"\0")
        return f"dir sha256:{digest.hexdigest()} {path.name}"
    return f"requirement {spec}"


# -- the installer ---------------------------------------------------------------------------------


@dataclass
class Report:
    changed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def change(self, what: str) -> None:
        self.changed.append(what)
        print(f"changed  {what}", flush=True)


@dataclass
class Installer:
    """One installation of `bundle` into `root`; `live` runs system commands, otherwise they are planned."""

    bundle: Path
    root: Path
    live: bool
    agent_spec: str | None = None
    skip_apt: bool = False
    offline: bool = False  # the agent comes from a release staged in /opt/vigil/releases; no apt, no index
    runner: Runner = field(default_factory=Runner)
    report: Report = field(default_factory=Report)

    def target(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    # -- the steps -------------------------------------------------------------------------------
    def run(self) -> Report:
        node = self.read_bundle()
        if self.live and self.root == Path("/") and os.geteuid() != 0:
            raise InstallError("run the installer as root (sudo ./install.sh), or use --root DIR")
        self.apt_packages(node)
        uid, gid = self.system_user()
        self.directories(uid, gid)
        touched = self.bundle_files(uid, gid)
        touched |= self.launcher()
        self.boot_watchdog()
        agent_changed = self.release_slot() if self.offline else self.venv_and_agent()
        self.services(touched, agent_changed)
        self.plan()
        return self.report

    def read_bundle(self) -> dict[str, object]:
        missing = [f.name for f in BUNDLE_FILES if not f.optional and not (self.bundle / f.name).is_file()]
        if missing:
            raise InstallError(f"{self.bundle} is not a complete node bundle (missing {', '.join(missing)})")
        try:
            node = json.loads((self.bundle / "node.json").read_text())
        except (OSError, ValueError) as exc:
            raise InstallError(f"{self.bundle}/node.json: {exc}") from None
        if not isinstance(node, dict) or "id" not in node:
            raise InstallError(f"{self.bundle}/node.json has no node id")
        return node

    def apt_packages(self, node: dict[str, object]) -> None:
        wanted = list(BASE_PACKAGES)
        if node.get("capture_source") == "picamera2":
            wanted += CAMERA_PACKAGES
        missing = [p for p in wanted if p not in dpkg_installed(self.root)]
        if not missing or self.skip_apt:
            return
        if self.offline:
            self.offline_packages(missing)
            return
        if not self.live:
            self.report.pending.append("apt-get install -y --no-install-recommends " + " ".join(missing))
            return
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        self.runner.run(["apt-get", "update", "-q"], env)
        self.runner.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env)
        self.report.change("apt packages " + " ".join(missing))

    def system_user(self) -> tuple[int, int]:
        """The `vigil` system user, in the extra groups that exist; its uid and gid."""
        passwd, group = self.target("/etc/passwd"), self.target("/etc/group")
        if not any(r[0] == USER for r in read_table(passwd)):
            if self.live:
                self.runner.run(
                    [
                        "useradd",
                        "--system",
                        "--user-group",
                        "--home-dir",
                        STATE_DIR,
                        "--no-create-home",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--comment",
                        "Vigil camera agent",
                        USER,
                    ]
                )
            else:
                self._add_user_entries(passwd, group)
            self.report.change(f"system user {USER}")
        groups = read_table(group)
        absent = [g for g in EXTRA_GROUPS if not any(r[0] == g for r in groups)]
        if absent:
            self.report.notes.append(
                f"group(s) {', '.join(absent)} do not exist here; {USER} is not added to them"
            )
        joining = [r[0] for r in groups if r[0] in EXTRA_GROUPS and USER not in _members(r)]
        if joining:
            if self.live:
                self.runner.run(["usermod", "--append", "--groups", ",".join(joining), USER])
            else:
                self._join_groups(joining)
            self.report.change(f"{USER} joins group(s) {', '.join(joining)}")
        row = next((r for r in read_table(passwd) if r[0] == USER), None)
        if row is None or len(row) < 4:
            raise InstallError(f"user {USER} is still missing from {passwd}")
        return int(row[2]), int(row[3])

    def _add_user_entries(self, passwd: Path, group: Path) -> None:
        """useradd --system for a tree we must not run useradd against: highest free id below 1000."""
        users, groups = read_table(passwd), read_table(group)
        used = {int(r[2]) for r in users if len(r) > 2 and r[2].isdigit()}
        used |= {int(r[2]) for r in groups if len(r) > 2 and r[2].isdigit()}
        free = next((i for i in range(999, 99, -1) if i not in used), None)
        if free is None:
            raise InstallError(f"no free system uid/gid below 1000 in {passwd}")
        new_group = not any(r[0] == USER for r in groups)
        if new_group:
            write_table(group, [*groups, [USER, "x", str(free), ""]], 0o644)
        gid = next(r[2] for r in read_table(group) if r[0] == USER)
        write_table(
            passwd,
            [*users, [USER, "x", str(free), gid, "Vigil camera agent", STATE_DIR, "/usr/sbin/nologin"]],
            0o644,
        )
        shadow, gshadow = self.target("/etc/shadow"), self.target("/etc/gshadow")
        if shadow.exists():
            write_table(shadow, [*read_table(shadow), [USER, "!*", "", "", "", "", "", "", ""]], 0o640)
        if gshadow.exists() and new_group:
            write_table(gshadow, [*read_table(gshadow), [USER, "!", "", ""]], 0o640)

    def _join_groups(self, names: list[str]) -> None:
        for table, mode in ((self.target("/etc/group"), 0o644), (self.target("/etc/gshadow"), 0o640)):
            rows = read_table(table)
            if not rows:
                continue
            for row in rows:
                if row[0] in names and len(row) >= 4 and USER not in _members(row):
                    row[3] = ",".join([*_members(row), USER])
            write_table(table, rows, mode)

    def directories(self, uid: int, gid: int) -> None:
        for path, mode, owner in (
            (CONFIG_DIR, 0o750, (0, gid)),
            (STATE_DIR, 0o750, (uid, gid)),
            (OPT_DIR, 0o755, (0, 0)),
            (LIB_DIR, 0o755, (0, 0)),
            (RELEASES_DIR, 0o755, (uid, gid)),  # the agent installs updates here (and nowhere else in /opt)
        ):
            target = self.target(path)
            changed = not target.is_dir()
            target.mkdir(parents=True, exist_ok=True)
            if (target.stat().st_mode & 0o7777) != mode:
                target.chmod(mode)
                changed = True
            changed |= self._chown(target, *owner)
            if changed:
                self.report.change(f"{path}/ ({mode:04o})")

    def bundle_files(self, uid: int, gid: int) -> set[str]:
        """Copy every bundle file into place; the names of those that changed."""
        ids = {"root": 0, USER: uid}
        gids = {"root": 0, USER: gid}
        touched: set[str] = set()
        for spec in BUNDLE_FILES:
            if spec.optional and not (self.bundle / spec.name).is_file():
                continue
            data = (self.bundle / spec.name).read_bytes()
            for dest in filter(None, (f"{CONFIG_DIR}/{spec.name}", spec.system_path)):
                if self._place(dest, data, spec.mode, ids[spec.owner], gids[spec.group]):
                    touched.add(spec.name)
        for wheel in sorted(self.bundle.glob("vigil_agent-*.whl")):
            if self._place(f"{DIST_DIR}/{wheel.name}", wheel.read_bytes(), 0o644, 0, 0):
                touched.add("wheel")
        return touched

    def _place(self, dest: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
        path = self.target(dest)
        changed = False
        try:
            same = path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode
        except FileNotFoundError:
            same = False
        if not same:
            write_atomic(path, data, mode)
            changed = True
        changed |= self._chown(path, uid, gid)
        if changed:
            self.report.change(f"{dest} ({mode:04o})")
        return changed

    def _chown(self, path: Path, uid: int, gid: int) -> bool:
        st = path.stat()
        if (st.st_uid, st.st_gid) == (uid, gid):
            return False
        if os.geteuid() != 0:
            note = "not running as root: files keep their current owner (fix ownership on the node)"
            if note not in self.report.notes:
                self.report.notes.append(note)
            return False
        os.chown(path, uid, gid)
        return True

    def slots(self) -> ModuleType:
        """The release-slot module the bundle carries (agent/update/slots.py): stdlib only, like this file."""
        path = self.bundle / SLOTS_MODULE
        spec = importlib.util.spec_from_file_location("vigil_slots", path)
        if spec is None or spec.loader is None or not path.is_file():
            raise InstallError(f"{path} is missing: the bundle is incomplete")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def launcher(self) -> set[str]:
        """/opt/vigil/launch (the service's ExecStart), /opt/vigil/firstboot and /opt/vigil/current."""
        touched: set[str] = set()
        script = self.slots().launcher_script(LIB_DIR).encode()
        if self._place(LAUNCHER, script, 0o755, 0, 0):
            touched.add("launcher")
        flags = " --offline" if self.offline else ""
        firstboot = (
            "#!/bin/sh\n"
            "# Finishes a Vigil install prepared with --root (vigil-firstboot.service runs it; it also works\n"
            "# by hand, e.g. `chroot ROOT /opt/vigil/firstboot`). Safe to run again.\n"
            f'exec /usr/bin/python3 {CONFIG_DIR}/install.py --bundle {CONFIG_DIR}{flags} "$@"\n'
        )
        self._place(FIRSTBOOT, firstboot.encode(), 0o755, 0, 0)
        link = self.target(CURRENT_LINK)
        if not (link.is_symlink() and os.readlink(link) == "releases/current"):
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to("releases/current")
            self.report.change(f"{CURRENT_LINK} -> releases/current")
        return touched

    def offline_packages(self, missing: list[str]) -> None:
        """An offline install cannot fetch Debian packages: it says what is absent and what follows."""
        if "python3-venv" in missing or "python3" in missing:
            raise InstallError(
                f"{' and '.join(p for p in missing if p in ('python3', 'python3-venv'))} missing in the image: an "
                "offline install builds the agent's venv with them; install them into the image first "
                "(chroot ROOT apt-get install python3-venv)"
            )
        for name in missing:
            why = {
                "python3-picamera2": "the camera module cannot be opened until it is installed (Raspberry Pi archive: "
                "apt install python3-picamera2); the agent runs meanwhile and reports camera_lost",
                "fake-hwclock": "the clock starts in 1970 after a power cut until NTP or GNSS sets it",
                "ca-certificates": "only the fleet CA is trusted (enough for the broker)",
                "python3-numpy": "not needed: numpy comes from the release's wheelhouse",
            }.get(name, "not carried by an offline bundle")
            self.report.notes.append(f"{name} is not in the image: {why}")

    def release_slot(self) -> bool:
        """Offline: the release staged in /opt/vigil/releases gets its venv (first boot) or is planned."""
        slots = self.slots()
        layout = slots.Layout(self.target(RELEASES_DIR))
        staged = slots.staged_versions(layout)
        if not staged:
            if slots.current(layout) is None:
                raise InstallError(
                    f"no release in {RELEASES_DIR}: an offline install needs one (vigil-provision install --offline)"
                )
            return False
        version = staged[-1]
        if not self.live:
            self.report.pending.append(
                f"build the venv of release {version} in {RELEASES_DIR}/{version} from its wheelhouse (no network)"
            )
            return False
        try:
            slots.install_staged(layout, version, sys.executable, lambda line: print("  " + line, flush=True))
        except slots.SlotError as exc:
            raise InstallError(str(exc)) from None
        self.report.change(f"release {version} installed in {RELEASES_DIR}/{version} (venv from its wheelhouse)")
        return True

    def boot_watchdog(self) -> None:
        """Raspberry Pi firmware: make sure the bcm2835 watchdog is on (systemd then feeds it)."""
        config = next((self.target(p) for p in BOOT_CONFIGS if self.target(p).is_file()), None)
        if config is None:
            self.report.notes.append(
                "no Raspberry Pi boot config.txt found; hardware watchdog dtparam not set"
            )
            return
        text = config.read_text()
        if any(line.strip() == WATCHDOG_DTPARAM for line in text.splitlines()):
            return
        addition = ("" if text.endswith("\n") or not text else "\n") + "# Vigil: hardware watchdog\n"
        write_atomic(
            config, (text + addition + WATCHDOG_DTPARAM + "\n").encode(), config.stat().st_mode & 0o7777
        )
        self.report.change(f"/{config.relative_to(self.root)} ({WATCHDOG_DTPARAM})")

    def venv_and_agent(self) -> bool:
        """The venv (--system-site-packages, for apt's picamera2) and the agent in it; True if changed."""
        venv = self.target(VENV_DIR)
        cfg = venv / "pyvenv.cfg"
        venv_ok = cfg.is_file() and "include-system-site-packages = true" in cfg.read_text()
        spec = self.resolve_agent_spec()
        if not self.live:
            if not venv_ok:
                self.report.pending.append(f"python3 -m venv --system-site-packages {VENV_DIR}")
            self.report.pending.append(
                f"{VENV_DIR}/bin/python -m pip install {spec or '<agent: pass --agent WHEEL|DIR>'}"
            )
            return False
        changed = False
        if not venv_ok:
            self.runner.run([sys.executable, "-m", "venv", "--system-site-packages", VENV_DIR])
            self.report.change(f"{VENV_DIR} (venv with system site packages)")
            changed = True
        if spec is None:
            raise InstallError(
                "no agent to install: pass --agent WHEEL|DIR|REQUIREMENT (or put the wheel in the bundle)"
            )
        marker = self.target(AGENT_MARKER)
        fingerprint = source_fingerprint(spec)
        installed = marker.read_text().strip() if marker.is_file() else ""
        if changed or installed != fingerprint:
            self.runner.run([f"{VENV_DIR}/bin/python", "-m", "pip", "install", "-q", "--upgrade", spec])
            write_atomic(marker, (fingerprint + "\n").encode(), 0o644)
            self.report.change(f"agent installed into {VENV_DIR} from {spec}")
            changed = True
        return changed

    def resolve_agent_spec(self) -> str | None:
        """--agent, else a wheel in the bundle or /opt/vigil/dist, else a requirement recorded there by an
        offline install, else the checkout this file lives in. An offline install keeps the agent source
        inside the image so first boot can install it."""
        requirement = self.target(f"{DIST_DIR}/requirement.txt")
        if self.agent_spec:
            path = Path(self.agent_spec)
            if self.live:
                return str(path.resolve()) if path.exists() else self.agent_spec
            if path.suffix == ".whl" and path.is_file():
                self._place(f"{DIST_DIR}/{path.name}", path.read_bytes(), 0o644, 0, 0)
                return f"{DIST_DIR}/{path.name}"
            if not path.exists():
                self._place(f"{DIST_DIR}/requirement.txt", (self.agent_spec + "\n").encode(), 0o644, 0, 0)
                return self.agent_spec
            self.report.notes.append(
                f"the agent source {path} is not inside the image; give --agent a wheel "
                "(pip wheel --no-deps -w dist .) so first boot can install it"
            )
            return str(path.resolve())
        for folder in (self.bundle, self.target(DIST_DIR)):
            wheels = sorted(folder.glob("vigil_agent-*.whl"))
            if wheels and folder == self.bundle and self.live:
                return str(wheels[-1])
            if wheels:
                return f"{DIST_DIR}/{wheels[-1].name}"
        if requirement.is_file() and requirement.read_text().strip():
            return requirement.read_text().strip()
        checkout = Path(__file__).resolve().parents[1]
        if (checkout / "pyproject.toml").is_file() and (checkout / "agent").is_dir():
            return str(checkout)
        return None

    def services(self, touched: set[str], agent_changed: bool) -> None:
        enabled = self.target(f"/etc/systemd/system/multi-user.target.wants/{SERVICE}")
        if not self.live:
            self._symlink(enabled, f"/etc/systemd/system/{SERVICE}")
            if self.report.pending:
                firstboot = self.target(f"/etc/systemd/system/multi-user.target.wants/{FIRSTBOOT_SERVICE}")
                self._symlink(firstboot, f"/etc/systemd/system/{FIRSTBOOT_SERVICE}")
            return
        if not self.runner.systemd_running():
            # e.g. `chroot ROOT /opt/vigil/firstboot`: enable by symlink, the next boot starts everything
            self._symlink(enabled, f"/etc/systemd/system/{SERVICE}")
            self.report.notes.append("systemd is not running here (a chroot?): the agent starts at the next boot")
            return
        run = self.runner.run
        if touched & {"system/vigil-agent.service", "system/vigil-firstboot.service"}:
            run(["systemctl", "daemon-reload"])
        if "system/watchdog-vigil.conf" in touched:
            run(["systemctl", "daemon-reexec"])  # RuntimeWatchdogSec is read by PID 1 itself
        if "system/journald-vigil.conf" in touched:
            run(["systemctl", "restart", "systemd-journald.service"])
        if "system/70-vigil-modem.rules" in touched:
            run(["udevadm", "control", "--reload-rules"])
            run(["udevadm", "trigger", "--action=change", "--subsystem-match=tty"])
        if not self.runner.check(["systemctl", "is-enabled", "--quiet", SERVICE]):
            run(["systemctl", "enable", SERVICE])
            self.report.change(f"enabled {SERVICE}")
        restart = agent_changed or any(s.restarts_agent and s.name in touched for s in BUNDLE_FILES)
        if restart:
            # --no-block: under vigil-firstboot.service (ordered before the agent) a blocking restart
            # would wait for the very unit that runs it.
            run(["systemctl", "--no-block", "restart", SERVICE])
            self.report.change(f"restarted {SERVICE}")
        elif not self.runner.check(["systemctl", "is-active", "--quiet", SERVICE]):
            run(["systemctl", "--no-block", "start", SERVICE])
            self.report.change(f"started {SERVICE}")

    def _symlink(self, link: Path, target: str) -> None:
        if link.is_symlink() and os.readlink(link) == target:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(target)
        self.report.change(f"/{link.relative_to(self.root)} -> {target}")

    def plan(self) -> None:
        """What is left for the node itself (--root), or nothing: then an old plan is removed."""
        path = self.target(PLAN_FILE)
        if not self.report.pending:
            if path.exists():
                path.unlink()
                self.report.change(f"{PLAN_FILE} removed (nothing left to do)")
            return
        text = (
            "# Steps the Vigil installer could not do in an offline tree; vigil-firstboot.service runs\n"
            f"# {FIRSTBOOT} on first boot to do them:\n"
            + "".join(f"{step}\n" for step in self.report.pending)
        )
        self._place(PLAN_FILE, text.encode(), 0o644, 0, 0)


def _members(row: list[str]) -> list[str]:
    return [m for m in row[3].split(",") if m] if len(row) > 3 else []


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="install.sh",
        description="Install a Vigil node bundle: apt packages, the vigil user, a venv with the agent, "
        "/etc/vigil, the systemd service, udev rules, journald limits and the hardware watchdog. "
        "Safe to run again; a second run reports no changes.",
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="the node bundle directory (default: the one this script is in)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        metavar="DIR",
        help="install into this directory tree (an SD card's root filesystem) instead of /; "
        "runs no system commands and leaves the rest to vigil-firstboot.service",
    )
    parser.add_argument(
        "--agent",
        metavar="WHEEL|DIR|REQ",
        help="what to pip-install into the venv (default: a vigil_agent wheel in the bundle, "
        "else the checkout this script belongs to)",
    )
    parser.add_argument("--skip-apt", action="store_true", help="do not install apt packages")
    parser.add_argument(
        "--offline",
        action="store_true",
        help="install the agent from the release staged in /opt/vigil/releases (no apt, no package index)",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve() if args.root else Path("/")
    try:
        if args.root is not None and not root.is_dir():
            raise InstallError(f"--root {args.root} is not a directory")
        installer = Installer(
            args.bundle.resolve(),
            root,
            live=args.root is None,
            agent_spec=args.agent,
            skip_apt=args.skip_apt,
            offline=args.offline,
            runner=runner or Runner(),
        )
        report = installer.run()
    except InstallError as exc:
        print(f"install: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"install: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note     {note}")
    for step in report.pending:
        print(f"pending  {step}")
    where = f" in {root}" if args.root else ""
    summary = f"{len(report.changed)} change(s)" if report.changed else "no changes"
    left = f"; {len(report.pending)} step(s) left for the node ({PLAN_FILE})" if report.pending else ""
    print(f"install: {summary}{where}{left}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
