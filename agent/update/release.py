"""The release file: what `vigil-provision release build` writes and what a node accepts.

A release is one uncompressed tar (the wheels inside are compressed already)::

    manifest.json        format, version, arch, python, packages and the size and sha256 of every file
    manifest.json.sig    Ed25519 signature of manifest.json's exact bytes (base64), by the fleet's release key
    lock.txt             exact versions with hashes: what the slot's venv installs (pip --require-hashes)
    wheels/*.whl         the agent wheel and every dependency, for the node's architecture and Python

A node checks, in this order and before it writes anything big: the file's sha256 (from the
request), the signature against the fleet key in its bundle, the manifest (version requested,
architecture, Python, no downgrade), then every member against the manifest while extracting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.update.slots import LOCK, MANIFEST, SIGNATURE, VERSION_RE, WHEELS

FORMAT = "vigil-release/1"
ARCHES = {"arm64": "aarch64", "amd64": "x86_64"}  # Debian's names (what people pick) -> the kernel's
MAX_MEMBER_NAME = 200
MAX_MANIFEST_BYTES = 1 << 20


class ReleaseError(Exception):
    """The release is refused; the message says why (sent back to the operator as is)."""


def node_arch() -> str:
    machine = platform.machine().lower()
    for arch, kernel in ARCHES.items():
        if machine in (kernel, arch):
            return arch
    return machine


def python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def key_id(public_raw: bytes) -> str:
    """A short, stable name for a release key (first 16 hex digits of the sha256 of its raw bytes)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: canonical JSON, so a rebuilt manifest signs the same."""
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def version_key(version: str) -> tuple[Any, ...]:
    """PEP 440 ordering of the versions a release may carry (N.N.N with aN/bN/rcN, .postN, .devN)."""
    from packaging.version import InvalidVersion, Version

    try:
        return (Version(version),)
    except InvalidVersion:
        raise ReleaseError(f"{version!r} is not a version (PEP 440)") from None


@dataclass(frozen=True)
class Trusted:
    """The fleet's release public key as the node holds it."""

    key: Any  # cryptography Ed25519PublicKey
    id: str

    @classmethod
    def load(cls, path: Path) -> Trusted:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except FileNotFoundError:
            raise ReleaseError(
                f"no fleet release key at {path}: this node accepts no release (its bundle needs release-key.pub; "
                "run `vigil-provision release init-key` and reinstall the bundle)"
            ) from None
        except (OSError, ValueError) as exc:
            raise ReleaseError(f"the fleet release key {path} is unreadable: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ReleaseError(f"{path} is not an Ed25519 public key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(key, key_id(raw))

    def verify(self, data: bytes, signature_b64: bytes) -> None:
        from cryptography.exceptions import InvalidSignature

        try:
            signature = base64.b64decode(signature_b64.strip(), validate=True)
            self.key.verify(signature, data)
        except (InvalidSignature, ValueError):
            raise ReleaseError(
                f"the release's signature does not verify against this fleet's release key {self.id}: "
                "refused (tampered with, or signed by another key)"
            ) from None


@dataclass(frozen=True)
class Release:
    """A release file whose signature and manifest were checked."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def arch(self) -> str:
        return str(self.manifest["arch"])

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "arch": self.arch,
            "python": self.manifest.get("python"),
            "key_id": self.manifest.get("key_id"),
            "packages": self.manifest.get("packages", {}),
        }


def _member_ok(member: tarfile.TarInfo) -> bool:
    name = member.name
    parts = Path(name).parts
    if not name or name.startswith("/") or ".." in parts or len(name) > MAX_MEMBER_NAME:
        return False
    if member.isdir():
        return name.rstrip("/") == WHEELS
    if not member.isfile():
        return False  # links, devices, fifos: never
    if name in (MANIFEST, SIGNATURE, LOCK):
        return True
    return len(parts) == 2 and parts[0] == WHEELS and parts[1].endswith(".whl")


def _read_member(tar: tarfile.TarFile, name: str, limit: int) -> bytes | None:
    try:
        member = tar.getmember(name)
    except KeyError:
        return None
    if not member.isfile() or member.size > limit:
        raise ReleaseError(f"{name} in the release is not a small regular file")
    handle = tar.extractfile(member)
    assert handle is not None
    return handle.read()


def open_release(path: Path, trusted: Trusted) -> Release:
    """Check the release's structure, signature and manifest; nothing is extracted yet."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if not _member_ok(m)]
            if bad:
                raise ReleaseError(f"the release holds what a release may not: {', '.join(bad[:3])}; refused")
            data = _read_member(tar, MANIFEST, MAX_MANIFEST_BYTES)
            signature = _read_member(tar, SIGNATURE, 4096)
    except (tarfile.TarError, OSError) as exc:
        raise ReleaseError(f"{path.name} is not a release file ({exc}); refused") from None
    if data is None:
        raise ReleaseError("the release has no manifest.json; refused")
    if signature is None:
        raise ReleaseError("the release is not signed (no manifest.json.sig); refused")
    trusted.verify(data, signature)
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ReleaseError(f"the release manifest is not JSON ({exc}); refused") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReleaseError(f"the release manifest is not {FORMAT}; refused")
    if not isinstance(manifest.get("version"), str) or not VERSION_RE.match(manifest["version"]):
        raise ReleaseError("the release manifest has no usable version; refused")
    files = manifest.get("files")
    listed = {m.name for m in members if m.isfile()} - {MANIFEST, SIGNATURE}
    if not isinstance(files, dict) or set(files) != listed:
        raise ReleaseError("the release's files and its signed manifest differ; refused")
    return Release(path, manifest)


def check_compatible(release: Release, *, requested: str, running: str, force: bool) -> None:
    """The request, this node's architecture and Python, and no downgrade unless forced."""
    if release.version != requested:
        raise ReleaseError(f"the release is version {release.version}, the request says {requested}; refused")
    if release.arch != node_arch():
        raise ReleaseError(
            f"the release is built for {release.arch}, this node is {node_arch()}; refused"
        )
    if release.manifest.get("python") != python_tag():
        raise ReleaseError(
            f"the release is built for Python {release.manifest.get('python')}, this node runs {python_tag()}; refused"
        )
    if version_key(release.version) < version_key(running) and not force:
        raise ReleaseError(
            f"{release.version} is older than the running {running}: a downgrade is refused unless forced "
            '("force": true)'
        )


def _copy_checked(source: IO[bytes], dest: Path, expected: dict[str, Any], name: str) -> None:
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != expected.get("size") or digest.hexdigest() != expected.get("sha256"):
        raise ReleaseError(f"{name} does not match the signed manifest (sha256 or size differs); refused")


def extract(release: Release, dest: Path) -> None:
    """Write every file into `dest`, each checked against the signed manifest as it is copied."""
    files: dict[str, Any] = release.manifest["files"]
    dest.mkdir(parents=True)
    (dest / WHEELS).mkdir()
    try:
        with tarfile.open(release.path, "r:") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                target = dest / member.name
                handle = tar.extractfile(member)
                assert handle is not None
                if member.name in (MANIFEST, SIGNATURE):
                    target.write_bytes(handle.read())
                else:
                    _copy_checked(handle, target, files[member.name], member.name)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ReleaseError(f"cannot unpack the release: {exc}") from None
    except ReleaseError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
