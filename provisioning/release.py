"""Signed agent releases: the fleet's release key and `vigil-provision release build`.

FLEET/release/release.key   Ed25519 private key (0600): signs releases; keep it like the CA key
FLEET/release/release.pub   its public key: goes into every node bundle as release-key.pub

`release build` makes one file a node can install over the air (`agent/update`): the agent wheel and
its wheelhouse for the node's platform (provisioning.wheelhouse, the same builder as offline images),
the lock, and a manifest with versions and sha256s, signed (agent.update.release describes the format).
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.fetch import sha256_file
from agent.update.release import FORMAT, key_id, manifest_bytes
from agent.update.slots import LOCK, MANIFEST, SIGNATURE, WHEELS
from provisioning.errors import ProvisionError
from provisioning.files import ensure_dir, write_file
from provisioning.fleet import Fleet
from provisioning.wheelhouse import Target, Wheelhouse, build_agent_wheel, build_wheelhouse

Log = Callable[[str], None]
CHECKOUT = Path(__file__).resolve().parents[1]


def key_dir(fleet: Fleet) -> Path:
    return fleet.root / "release"


def private_key_path(fleet: Fleet) -> Path:
    return key_dir(fleet) / "release.key"


def public_key_path(fleet: Fleet) -> Path:
    return key_dir(fleet) / "release.pub"


def public_key_pem(fleet: Fleet) -> bytes | None:
    """The fleet's release public key, for node bundles; None before `release init-key`."""
    try:
        return public_key_path(fleet).read_bytes()
    except FileNotFoundError:
        return None


def init_key(fleet: Fleet) -> list[str]:
    if not fleet.root.is_dir():
        raise ProvisionError(f"no fleet directory {fleet.root}: run init-ca first")
    if private_key_path(fleet).exists():
        raise ProvisionError(
            f"{private_key_path(fleet)} exists: init-key never replaces a release key (every node trusts it)"
        )
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ensure_dir(key_dir(fleet), 0o700)
    write_file(private_key_path(fleet), private, 0o600)
    write_file(public_key_path(fleet), public, 0o644)
    return [
        f"release key created: {private_key_path(fleet)} (0600; back it up with the CA key), "
        f"public key {public_key_path(fleet)}",
        f"key id {_key_id(key)}; re-run `vigil-provision from-inventory` (or add-node --update) so every bundle "
        "carries release-key.pub, and install the bundles",
    ]


def _key_id(key: Ed25519PrivateKey) -> str:
    return key_id(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_private_key(fleet: Fleet) -> Ed25519PrivateKey:
    path = private_key_path(fleet)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ProvisionError(
            f"the fleet has no release key ({path}): run `vigil-provision release init-key` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"{path}: cannot read the release key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisionError(f"{path} is not an Ed25519 key")
    return key


@dataclass(frozen=True)
class Built:
    path: Path
    sha256: str
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "size": self.path.stat().st_size,
            "version": self.version,
            "arch": self.manifest["arch"],
            "python": self.manifest["python"],
            "key_id": self.manifest["key_id"],
            "packages": self.manifest["packages"],
        }


def release_name(version: str, arch: str) -> str:
    return f"vigil-agent-{version}-{arch}.tar"


def make_manifest(house: Wheelhouse, target: Target, key: Ed25519PrivateKey) -> dict[str, Any]:
    files = {LOCK: house.folder / LOCK, **{f"{WHEELS}/{w.name}": w for w in house.wheels}}
    return {
        "format": FORMAT,
        "name": "vigil-agent",
        "version": house.agent_version,
        "arch": target.arch,
        "machine": target.machine,
        "python": target.python,
        "platforms": target.platforms(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "key_id": _key_id(key),
        "packages": dict(sorted(house.packages.items())),
        "files": {
            name: {"size": path.stat().st_size, "sha256": sha256_file(path)} for name, path in sorted(files.items())
        },
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, path: Path | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "root", "root"
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    assert path is not None
    info.size = path.stat().st_size
    with path.open("rb") as fh:
        tar.addfile(info, fh)


def build(
    fleet: Fleet,
    target: Target,
    out: Path,
    *,
    agent_wheel: Path | None = None,
    source: Path | None = None,
    log: Log = print,
) -> Built:
    """Build, sign and write `out/vigil-agent-<version>-<arch>.tar` (and a .json summary beside it)."""
    key = load_private_key(fleet)  # before minutes of downloading
    if agent_wheel is not None and not agent_wheel.is_file():
        raise ProvisionError(f"--agent {agent_wheel}: no such wheel")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vigil-release-", dir=out) as tmp:
        work = Path(tmp)
        wheel = agent_wheel or build_agent_wheel(source or CHECKOUT, work / "dist", log)
        house = build_wheelhouse(wheel, target, work / "house", log)
        manifest = make_manifest(house, target, key)
        data = manifest_bytes(manifest)
        signature = base64.b64encode(key.sign(data)) + b"\n"
        dest = out / release_name(house.agent_version, target.arch)
        partial = work / dest.name
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, MANIFEST, data)
            _add(tar, SIGNATURE, signature)
            for name in manifest["files"]:
                _add(tar, name, path=house.folder / name)
        partial.replace(dest)
    built = Built(dest, sha256_file(dest), manifest)
    summary = json.dumps(built.summary(), indent=2) + "\n"
    write_file(dest.with_suffix(".json"), summary.encode(), 0o644)
    return built


def update_request(built: Built, url: str | None = None) -> dict[str, Any]:
    """The `agent/update` arguments for this release (the operator fills in where nodes fetch it)."""
    return {"url": url or f"https://YOUR-HOST/{built.path.name}", "sha256": built.sha256, "version": built.version}
