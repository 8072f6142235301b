"""`vigil-provision install NODE --root ROOT --offline`: an SD card (or any root filesystem) that needs no
network at first boot.

Into ROOT go, besides what every install writes (bundle, user, units, udev, watchdog; see install.py):
- a signed release of the agent for the node's architecture and Python, staged as the first slot in
  /opt/vigil/releases/<version> (agent wheel, wheelhouse, hashed lock, manifest): first boot builds
  its venv from it with no package index (built once per fleet and version, kept in FLEET/releases/,
  so every card of a fleet carries the same bits);
- the models the node uses, sha256-checked: YOLOX-Nano ships inside the agent wheel; CenterFace (face
  redaction) is copied to /var/lib/vigil/models/.
What cannot be carried (python3-picamera2 comes from the Raspberry Pi archive, not from PyPI) is
checked in ROOT's package database and reported. First boot is `/opt/vigil/firstboot`
(vigil-firstboot.service runs it; `chroot ROOT /opt/vigil/firstboot` works as well).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import models
from agent.detect.card import card_path_for
from agent.fetch import sha256_file
from agent.update import slots
from agent.update.release import ReleaseError, Trusted, extract, open_release
from provisioning import release as releases
from provisioning.errors import ProvisionError
from provisioning.fleet import Fleet
from provisioning.install import RELEASES_DIR, STATE_DIR, USER, dpkg_installed, read_table
from provisioning.wheelhouse import Target

Log = Callable[[str], None]
OFFLINE_MODELS = ("yolox-nano", "centerface")
CACHE = "cache"  # FLEET/cache/models/NAME/: models fetched once for every card of the fleet


@dataclass(frozen=True)
class OfflineOptions:
    target: Target
    release: Path | None = None  # a release file to use (else the fleet's, built when missing)
    agent_wheel: Path | None = None  # build the release from this wheel
    models_from: str | None = None  # a mirror URL or folder (layout of models/manifest.toml's mirror_path)
    rebuild: bool = False


def dpkg_arch(root: Path) -> str | None:
    """The architecture ROOT's packages are built for (from its dpkg database), if it has one."""
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except FileNotFoundError:
        return None
    for stanza in text.split("\n\n"):
        if "\nPackage: libc6\n" in f"\n{stanza}\n" or stanza.startswith("Package: python3\n"):
            for line in stanza.splitlines():
                if line.startswith("Architecture: ") and line[14:].strip() != "all":
                    return line[14:].strip()
    return None


def check_root(root: Path, target: Target) -> None:
    if not root.is_dir():
        raise ProvisionError(f"--root {root} is not a directory (mount the card's root filesystem there)")
    arch = dpkg_arch(root)
    if arch is not None and arch != target.arch:
        raise ProvisionError(f"{root} is a Debian {arch} system but the release would be for {target.arch} (--arch)")
    python = root / "usr" / "bin" / f"python{target.python}"
    if not (python.exists() or python.is_symlink()):
        found = sorted(p.name for p in (root / "usr" / "bin").glob("python3.*") if p.name[8:].isdigit())
        raise ProvisionError(
            f"{root} has no /usr/bin/python{target.python} (it has: {', '.join(found) or 'no python3'}); the "
            f"wheelhouse would be for CPython {target.python}: pass --python X.Y for this image"
        )


def fleet_release(fleet: Fleet, options: OfflineOptions, log: Log) -> Path:
    """The release to stage: the one given, else the fleet's for this version and target (built once)."""
    if options.release is not None:
        if not options.release.is_file():
            raise ProvisionError(f"--release {options.release}: no such file")
        return options.release
    import agent

    folder = fleet.root / "releases"
    cached = folder / releases.release_name(agent.__version__, options.target.arch)
    if cached.is_file() and not options.rebuild and options.agent_wheel is None:
        log(f"release   {cached} (the fleet's release of this version; --rebuild makes it again)")
        return cached
    log(f"building the release for {options.target.describe()} (pip download of the wheelhouse)…")
    built = releases.build(fleet, options.target, folder, agent_wheel=options.agent_wheel, log=log)
    log(f"release   {built.path} ({built.version}, sha256 {built.sha256[:16]}…)")
    return built.path


def stage_release(release_file: Path, bundle: Path, root: Path, target: Target) -> tuple[str, bool]:
    """Verify the release with the key the node will trust and unpack it as ROOT's first slot."""
    try:
        trusted = Trusted.load(bundle / "release-key.pub")
        checked = open_release(release_file, trusted)
    except ReleaseError as exc:
        raise ProvisionError(f"{release_file.name}: {exc}") from None
    if checked.arch != target.arch or checked.manifest.get("python") != target.python:
        raise ProvisionError(
            f"{release_file.name} is for {checked.arch} / Python {checked.manifest.get('python')}, the node is "
            f"{target.arch} / Python {target.python}"
        )
    layout = slots.Layout(root / RELEASES_DIR.lstrip("/"))
    slot = layout.slot(checked.version)
    if slot.is_dir():
        try:
            if slots.read_manifest(slot) == checked.manifest:
                return checked.version, False  # staged (or installed by first boot) already
        except slots.SlotError:
            pass
        shutil.rmtree(slot)
    layout.releases.mkdir(parents=True, exist_ok=True)
    try:
        extract(checked, slot)
    except ReleaseError as exc:
        raise ProvisionError(f"{release_file.name}: {exc}") from None
    return checked.version, True


def _model_in_wheel(slot: Path, item: models.ManifestEntry) -> bool:
    """Whether the staged agent wheel ships `item` with the manifest's sha256."""
    if not item.shipped or not item.file or not item.sha256:
        return False
    for wheel in (slot / "wheels").glob("vigil_agent-*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            member = next((n for n in archive.namelist() if n.endswith(f"/share/vigil/models/{item.file}")), None)
            if member is not None:
                return hashlib.sha256(archive.read(member)).hexdigest() == item.sha256
    return False


def _mirror_url(models_from: str | None) -> str | None:
    if models_from is None or "://" in models_from:
        return models_from
    folder = Path(models_from).expanduser().resolve()
    if not folder.is_dir():
        raise ProvisionError(f"--models-from {models_from}: not a folder or URL")
    return folder.as_uri()


def place_models(fleet: Fleet, root: Path, slot: Path, models_from: str | None, log: Log) -> list[Path]:
    """Every model the node uses, checked against the manifest's sha256; returns the files written."""
    written: list[Path] = []
    for name in OFFLINE_MODELS:
        item = models.entry(name)
        if _model_in_wheel(slot, item):
            log(f"model     {name}: in the agent wheel (sha256 {(item.sha256 or '')[:16]}… checked)")
            continue
        try:
            cached = models.fetch(name, fleet.root / CACHE, mirror=_mirror_url(models_from))
        except models.ModelError as exc:
            raise ProvisionError(f"model {name}: {exc}") from None
        dest = root / STATE_DIR.lstrip("/") / "models" / name / cached.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        for source in (cached, card_path_for(cached)):
            if source.is_file():
                target = dest.parent / source.name
                if not target.is_file() or target.read_bytes() != source.read_bytes():
                    shutil.copyfile(source, target)
                    written.append(target)
        if item.sha256 and sha256_file(dest) != item.sha256:
            raise ProvisionError(f"model {name}: {dest} does not have the manifest's sha256 after copying")
        log(f"model     {name}: {STATE_DIR}/models/{name}/{dest.name} (sha256 {(item.sha256 or '?')[:16]}… checked)")
    return written


def chown_tree(root: Path, paths: list[Path]) -> None:
    """Hand the release area and the models to the node's `vigil` user (the agent prunes and updates them)."""
    if os.geteuid() != 0:
        return
    row = next((r for r in read_table(root / "etc/passwd") if r[0] == USER), None)
    if row is None:
        return
    for top in paths:
        if top.exists():
            os.lchown(top, int(row[2]), int(row[3]))
            slots.give_to_owner(top, top)


def missing_for_offline(root: Path) -> list[str]:
    """Debian packages an offline first boot needs that ROOT lacks (it cannot fetch them)."""
    installed = dpkg_installed(root)
    return [p for p in ("python3", "python3-venv") if installed and p not in installed]


def install_offline(fleet: Fleet, node: str, root: Path, options: OfflineOptions, log: Log = print) -> int:
    from provisioning import install

    bundle = fleet.bundle_dir(node)
    if not bundle.is_dir():
        raise ProvisionError(f"no bundle for node {node!r} in {fleet.nodes_dir}: run add-node first")
    check_root(root, options.target)
    lacking = missing_for_offline(root)
    if lacking:
        raise ProvisionError(
            f"{root} lacks {', '.join(lacking)}, which first boot needs to build the agent's venv offline; install "
            f"them into the image first (e.g. chroot {root} apt-get install {' '.join(lacking)})"
        )
    key = releases.public_key_pem(fleet)
    if key is None:
        raise ProvisionError(
            "the fleet has no release key: run `vigil-provision release init-key` first (an offline node is "
            "updated over the air, with releases that key signs)"
        )
    carried = (bundle / "release-key.pub").read_bytes() if (bundle / "release-key.pub").is_file() else None
    if carried != key:
        raise ProvisionError(
            f"the bundle of {node} does not carry the fleet's release key: re-run `vigil-provision from-inventory` "
            f"(or add-node {node} --update) first"
        )
    version, staged = stage_release(fleet_release(fleet, options, log), bundle, root, options.target)
    slot = root / RELEASES_DIR.lstrip("/") / version
    log(f"staged    release {version} in {RELEASES_DIR}/{version}" if staged else
        f"unchanged release {version} in {RELEASES_DIR}/{version}")
    place_models(fleet, root, slot, options.models_from, log)
    code = install.main(["--bundle", str(bundle), "--root", str(root), "--offline"])
    chown_tree(root, [root / RELEASES_DIR.lstrip("/"), root / STATE_DIR.lstrip("/") / "models"])
    return code
