"""A real Debian 12 (bookworm, the base of Raspberry Pi OS) arm64 root filesystem for tests: made with
debootstrap, run on this x86 machine through qemu-user-static and the kernel's binfmt_misc.

debootstrap's second stage runs every package's scripts under emulation (about eight minutes on two
cores), so the finished root is kept as a tar in a cache folder outside the checkout
($VIGIL_TEST_CACHE, default ~/.cache/vigil-tests), keyed by everything that shapes it; later runs
unpack it in seconds. CI starts without the cache and pays the full price once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
ARCH = "arm64"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv", "python3-numpy", "ca-certificates")
MIRROR = "http://deb.debian.org/debian"  # what this machine's apt sources use
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_ENTRY = BINFMT / "qemu-aarch64"
TOOLS = {"debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support"}


def cache_dir() -> Path:
    return Path(os.environ.get("VIGIL_TEST_CACHE") or Path.home() / ".cache" / "vigil-tests")


def cache_key() -> str:
    spec = f"{SUITE} {ARCH} {VARIANT} {','.join(PACKAGES)} {MIRROR}"
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def debootstrap_argv(target: Path) -> list[str]:
    command = ["debootstrap", f"--arch={ARCH}", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE,
               str(target), MIRROR]
    return ["nice", "-n", "15", *command]  # its second stage runs under emulation for minutes


def unavailable() -> str | None:
    """Why arm64 binaries cannot run here (a skip reason), or None once they can. Mounts binfmt_misc and
    registers qemu's aarch64 handler when they are missing, as a Debian machine's boot would."""
    if os.geteuid() != 0:
        return "debootstrap, chroot and mounting binfmt_misc need root (CI runs as root)"
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return f"Debian packages {' '.join(missing)} are not installed (./scripts/setup installs them)"
    if not (BINFMT / "register").exists():
        res = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            return f"binfmt_misc cannot be mounted here ({res.stderr.strip() or res.returncode}); arm64 cannot run"
    if not QEMU_ENTRY.exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not QEMU_ENTRY.exists() or "enabled" not in QEMU_ENTRY.read_text():
        raise RuntimeError(
            f"binfmt_misc is mounted but qemu-aarch64 is not registered ({QEMU_ENTRY}); "
            "try `update-binfmts --enable qemu-aarch64`"
        )
    return None


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two test runs on one machine build the cache once
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bookworm_arm64(dest: Path) -> tuple[Path, dict[str, float | bool]]:
    """A fresh copy of the cached root in `dest` (debootstrapped first if not cached); and timings."""
    cache = cache_dir() / f"debian-{SUITE}-{ARCH}-{VARIANT}-{cache_key()}.tar"
    timing: dict[str, float | bool] = {"cached": cache.is_file()}
    with _locked(cache.with_suffix(".lock")):
        if not cache.is_file():
            timing["cached"] = False
            build = cache.parent / f".build-{os.getpid()}"
            shutil.rmtree(build, ignore_errors=True)
            started = time.monotonic()
            res = subprocess.run(debootstrap_argv(build / "root"), capture_output=True, text=True)
            if res.returncode != 0:
                log = build / "root" / "debootstrap" / "debootstrap.log"
                detail = log.read_text(errors="replace")[-3000:] if log.exists() else res.stdout[-3000:]
                raise RuntimeError(f"debootstrap failed ({res.returncode}): {res.stderr[-2000:]}\n{detail}")
            timing["debootstrap_s"] = round(time.monotonic() - started, 1)
            partial = cache.with_suffix(".tmp")
            subprocess.run(["tar", "--numeric-owner", "-C", str(build / "root"), "-cf", str(partial), "."],
                           check=True)
            partial.replace(cache)
            shutil.rmtree(build, ignore_errors=True)
    started = time.monotonic()
    dest.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-C", str(dest), "-xf", str(cache)], check=True)
    timing["unpack_s"] = round(time.monotonic() - started, 1)
    return dest, timing


def elf_machine(path: Path) -> int:
    """e_machine of an ELF file: 183 is AArch64, 62 x86-64."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little")
