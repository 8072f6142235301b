"""Agent releases for tests, made by the real builder (provisioning.release: agent wheel, wheelhouse for the
platform, lock, signed manifest) from a copy of this checkout with another version, and for the failure
cases a deliberate defect; plus the ways an attacker or an accident spoils a release file."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.update.slots import MANIFEST, SIGNATURE
from provisioning import release
from provisioning.fleet import Fleet
from provisioning.wheelhouse import Target
from tests.conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "agent", "provisioning", "models", "schema")
ENTRY = "def cmd_run(args: argparse.Namespace) -> int:\n"
DEFECTS = {
    # the agent dies at every start, before it does anything
    "crash": '    raise RuntimeError("this release is broken: it crashes at start")\n',
    # it runs and analyses, but its uplink never reaches the broker (a bad default, a TLS regression…)
    "no-broker": '    os.environ["VIGIL_UPLINK__BROKER"] = "mqtt://127.0.0.1:9"\n',
}


def source_tree(dest: Path, version: str, defect: str | None = None) -> Path:
    """A copy of the checkout that builds as `version`, with `defect` (a key of DEFECTS) if given."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(src, dest / name)
    init = dest / "agent" / "__init__.py"
    text = init.read_text()
    assert '__version__ = "' in text
    init.write_text(text.split('__version__ = "')[0] + f'__version__ = "{version}"\n')
    if defect is not None:
        cli = dest / "agent" / "cli.py"
        text = cli.read_text()
        assert ENTRY in text, "agent/cli.py changed: update tests/releases.py"
        cli.write_text(text.replace(ENTRY, ENTRY + DEFECTS[defect], 1))
    return dest


class Releases:
    """A fleet with a release key, and releases built for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fleet = Fleet(folder / "fleet")
        self.fleet.root.mkdir(parents=True)
        release.init_key(self.fleet)
        self.public_key = release.public_key_path(self.fleet)

    def build(self, version: str, *, arch: str = "amd64", defect: str | None = None) -> release.Built:
        tag = f"{version}-{arch}-{defect or 'ok'}"
        source = source_tree(self.folder / "src" / tag, version, defect)
        return release.build(self.fleet, Target(arch), self.folder / "out" / tag, source=source, log=lambda _m: None)


def rewrite(built: release.Built, dest: Path, change) -> tuple[Path, str]:
    """A copy of the release file with `change(name, data) -> data | None` applied to each member
    (None drops it); returns the new file and its sha256 (which a request would then carry)."""
    with tarfile.open(built.path) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for member in src.getmembers():
            handle = src.extractfile(member)
            data = change(member.name, handle.read() if handle else b"")
            if data is None:
                continue
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return dest, hashlib.sha256(dest.read_bytes()).hexdigest()


def tampered(built: release.Built, dest: Path) -> tuple[Path, str]:
    """One wheel altered after signing (the manifest and its signature untouched)."""
    wheel = next(n for n in built.manifest["files"] if n.startswith("wheels/vigil_agent-"))
    return rewrite(built, dest, lambda name, data: data + b"\0" if name == wheel else data)


def unsigned(built: release.Built, dest: Path) -> tuple[Path, str]:
    return rewrite(built, dest, lambda name, data: None if name == SIGNATURE else data)


def signed_by_another_key(built: release.Built, dest: Path) -> tuple[Path, str]:
    other = Ed25519PrivateKey.generate()
    manifest: list[bytes] = []

    def change(name: str, data: bytes) -> bytes:
        if name == MANIFEST:
            manifest.append(data)
        if name == SIGNATURE:
            return base64.b64encode(other.sign(manifest[0])) + b"\n"
        return data

    return rewrite(built, dest, change)
