"""The node installer: into a Raspberry Pi OS-like tree with --root (twice: the second run changes
nothing), and the live path with a recording command runner standing in for apt/systemctl/udevadm."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from provisioning import install
from provisioning.cli import main as provision

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def bundle(tmp_path: Path, capsys) -> Path:
    fleet = tmp_path / "fleet"
    assert provision(["--fleet", str(fleet), "init-ca", "--broker", "mqtts://broker.city.example:8883"]) == 0
    assert (
        provision(
            [
                "--fleet",
                str(fleet),
                "add-node",
                "pole-a",
                "--site",
                "Market St",
                "--lat",
                "52.1",
                "--lon",
                "4.1",
                "--modem",
                "ec25",
                "--apn",
                "internet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    return fleet / "nodes" / "pole-a"


def pi_image(root: Path) -> Path:
    """The parts of a fresh Raspberry Pi OS root filesystem the installer looks at."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\ndialout:x:20:pi\nvideo:x:44:pi\ngpio:x:997:pi\npi:x:1000:\n"
    )
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1\n\n"
        "Package: python3-numpy\nStatus: deinstall ok config-files\n\n"
    )
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("[all]\ndtparam=audio=on\n")
    return root


def tree(root: Path) -> dict[str, tuple[str, int, int, int, int | str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        content: int | str = (
            os.readlink(path) if path.is_symlink() else (st.st_mtime_ns if path.is_file() else 0)
        )
        out[str(path.relative_to(root))] = (
            stat.filemode(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size,
            content,
        )
    return out


def passwd_entry(root: Path, name: str) -> list[str]:
    return next(
        line.split(":")
        for line in (root / "etc" / "passwd").read_text().splitlines()
        if line.startswith(name + ":")
    )


def test_install_into_a_root_twice(bundle: Path, tmp_path: Path, capsys):
    root = pi_image(tmp_path / "sdcard")
    wheel = tmp_path / "vigil_agent-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    argv = ["--bundle", str(bundle), "--root", str(root), "--agent", str(wheel)]

    assert install.main(argv) == 0
    out = capsys.readouterr().out
    assert "change(s) in" in out and "step(s) left for the node" in out

    user = passwd_entry(root, "vigil")
    uid, gid = int(user[2]), int(user[3])
    assert 100 <= uid < 1000 and user[5] == "/var/lib/vigil" and user[6] == "/usr/sbin/nologin"
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (root / "etc/group").read_text().splitlines()
    }
    assert "vigil" in groups["video"] and "vigil" in groups["dialout"] and "vigil" in groups["gpio"]
    assert "pi" in groups["video"]
    assert (root / "etc/shadow").read_text().splitlines()[-1].startswith("vigil:!*:")

    def check(path: str, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
        st = (root / path.lstrip("/")).stat()
        assert stat.S_IMODE(st.st_mode) == mode, path
        if IS_ROOT:
            assert (st.st_uid, st.st_gid) == owner, path

    check("/etc/vigil", 0o750, (0, gid))
    check("/var/lib/vigil", 0o750, (uid, gid))
    check("/opt/vigil", 0o755)
    check("/etc/vigil/config.toml", 0o640, (0, gid))
    check("/etc/vigil/node.key", 0o600, (uid, gid))
    check("/etc/vigil/node.crt", 0o644)
    check("/etc/vigil/ca.crt", 0o644)
    check("/etc/systemd/system/vigil-agent.service", 0o644)
    check("/etc/udev/rules.d/70-vigil-modem.rules", 0o644)
    check("/etc/systemd/journald.conf.d/vigil.conf", 0o644)
    check("/etc/systemd/system.conf.d/vigil-watchdog.conf", 0o644)
    for name in ("config.toml", "node.key", "system/vigil-agent.service", "system/70-vigil-modem.rules"):
        assert (root / "etc/vigil" / name).read_bytes() == (bundle / name).read_bytes()
    assert (root / "etc/systemd/system/vigil-agent.service").read_bytes() == (
        bundle / "system/vigil-agent.service"
    ).read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert os.readlink(wants / "vigil-agent.service") == "/etc/systemd/system/vigil-agent.service"
    assert os.readlink(wants / "vigil-firstboot.service") == "/etc/systemd/system/vigil-firstboot.service"
    assert "dtparam=watchdog=on" in (root / "boot/firmware/config.txt").read_text().splitlines()
    assert (root / "opt/vigil/dist" / wheel.name).read_bytes() == wheel.read_bytes()

    plan = (root / "etc/vigil/install-plan.txt").read_text()
    apt = next(line for line in plan.splitlines() if line.startswith("apt-get install"))
    assert apt.split()[4:] == [
        "python3-venv",
        "python3-numpy",
        "ca-certificates",
        "fake-hwclock",
        "python3-picamera2",
    ]  # python3 is installed already; numpy only half
    assert "python3 -m venv --system-site-packages /opt/vigil/venv" in plan
    assert f"/opt/vigil/venv/bin/python -m pip install /opt/vigil/dist/{wheel.name}" in plan

    before = tree(root)
    assert install.main(argv) == 0
    out = capsys.readouterr().out
    assert "install: no changes" in out and "changed " not in out
    assert tree(root) == before

    # /etc/vigil is itself a complete bundle: what vigil-firstboot.service re-runs on the node.
    assert install.main(["--bundle", str(root / "etc/vigil"), "--root", str(root)]) == 0
    assert "install: no changes" in capsys.readouterr().out
    assert tree(root) == before


def test_install_applies_only_what_a_bundle_update_changed(bundle: Path, tmp_path: Path, capsys):
    root = pi_image(tmp_path / "sdcard")
    argv = ["--bundle", str(bundle), "--root", str(root), "--agent", "vigil-agent==0.1.0"]
    assert install.main(argv) == 0
    fleet = bundle.parents[1]
    assert (
        provision(
            [
                "--fleet",
                str(fleet),
                "add-node",
                "pole-a",
                "--site",
                "Market St (moved)",
                "--lat",
                "52.1",
                "--lon",
                "4.1",
                "--modem",
                "ec25",
                "--apn",
                "internet",
                "--update",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert install.main(argv) == 0
    changed = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("changed")]
    assert changed == ["/etc/vigil/config.toml", "/etc/vigil/node.json"]


def test_install_refuses_an_incomplete_bundle(tmp_path: Path, capsys):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "root").mkdir()
    assert install.main(["--bundle", str(tmp_path / "bundle"), "--root", str(tmp_path / "root")]) == 1
    err = capsys.readouterr().err
    assert "not a complete node bundle" in err and "config.toml" in err
    assert list((tmp_path / "root").iterdir()) == []


class RecordingRunner(install.Runner):
    """Stands in for apt-get, useradd, systemctl and udevadm; keeps just enough state for a second run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands: list[list[str]] = []
        self.enabled = self.active = False

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        argv = list(argv)
        self.commands.append(argv)
        if argv[0] == "useradd":
            with (self.root / "etc/passwd").open("a") as f:
                f.write("vigil:x:999:999:Vigil camera agent:/var/lib/vigil:/usr/sbin/nologin\n")
            with (self.root / "etc/group").open("a") as f:
                f.write("vigil:x:999:\n")
        elif argv[0] == "usermod":
            install.Installer(Path("."), self.root, live=False)._join_groups(argv[3].split(","))
        elif argv[1:3] == ["-m", "venv"]:
            venv = self.root / argv[-1].lstrip("/")
            venv.mkdir(parents=True)
            (venv / "pyvenv.cfg").write_text("include-system-site-packages = true\n")
        elif argv[:2] == ["systemctl", "enable"]:
            self.enabled = True
        elif argv[0] == "systemctl" and argv[-2] in ("restart", "start") and argv[-1] == install.SERVICE:
            self.active = True

    def check(self, argv: Sequence[str]) -> bool:
        return self.enabled if "is-enabled" in argv else self.active if "is-active" in argv else False

    def systemd_running(self) -> bool:
        return True  # a booted node (the chroot case is tests/test_arm64_image.py)


def test_live_install_runs_each_system_step_once(bundle: Path, tmp_path: Path, capsys):
    root = pi_image(tmp_path / "pi")
    runner = RecordingRunner(root)
    installer = install.Installer(bundle, root, live=True, agent_spec="vigil-agent==0.1.0", runner=runner)
    report = installer.run()
    assert report.pending == []
    commands = [" ".join(c) for c in runner.commands]
    assert "apt-get update -q" in commands
    assert any(
        c.startswith("apt-get install -y -q --no-install-recommends python3-venv python3-numpy")
        and "python3-picamera2" in c
        for c in commands
    )
    assert any(c.startswith("useradd --system --user-group --home-dir /var/lib/vigil") for c in commands)
    assert "usermod --append --groups dialout,video,gpio vigil" in commands
    assert any(c.endswith("-m venv --system-site-packages /opt/vigil/venv") for c in commands)
    assert "/opt/vigil/venv/bin/python -m pip install -q --upgrade vigil-agent==0.1.0" in commands
    for expected in (
        "systemctl daemon-reload",
        "systemctl daemon-reexec",
        "systemctl restart systemd-journald.service",
        "udevadm control --reload-rules",
        "udevadm trigger --action=change --subsystem-match=tty",
        "systemctl enable vigil-agent.service",
        "systemctl --no-block restart vigil-agent.service",
    ):
        assert expected in commands, expected
    assert not (root / "etc/vigil/install-plan.txt").exists()

    # Second run: every step is already right; apt is satisfied once dpkg lists the packages.
    status = root / "var/lib/dpkg/status"
    status.write_text(
        status.read_text()
        + "".join(
            f"\nPackage: {p}\nStatus: install ok installed\n"
            for p in (*install.BASE_PACKAGES, *install.CAMERA_PACKAGES)
        )
    )
    runner.commands.clear()
    report = install.Installer(bundle, root, live=True, agent_spec="vigil-agent==0.1.0", runner=runner).run()
    assert report.changed == [] and runner.commands == []


def test_rewritten_tables_keep_their_owner_and_group(tmp_path):
    """/etc/shadow is root:shadow on Debian; rewriting it must not make it root:root."""
    import os

    from provisioning.install import read_table, write_table

    if os.geteuid() != 0:
        pytest.skip("changing a file's group needs root (CI runs as root)")
    shadow = tmp_path / "shadow"
    shadow.write_text("root:*:19000:0:99999:7:::\n")
    os.chown(shadow, 0, 42)
    write_table(shadow, [*read_table(shadow), ["vigil", "!*", "", "", "", "", "", "", ""]], 0o640)
    st = shadow.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 42, 0o640)
    assert shadow.read_text().endswith("vigil:!*:::::::\n")
