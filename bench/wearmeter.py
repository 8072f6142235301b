"""Instruments for bench/wear.py: bytes written to a device (ext4 on a loop device, the agent's
/proc io), and per file from LazyFS's operation log through a model of the page cache."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from collections import defaultdict
from datetime import datetime
from pathlib import Path

PAGE = 4096
WRITEBACK_S = 30.0  # vm.dirty_expire_centisecs: the kernel writes back what stayed dirty this long


# -- the device: ext4 on a loop device ---------------------------------------------------------------
def syncfs(path: Path) -> None:
    """Write back everything dirty on the file system holding `path` and commit its journal."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def spool_extent(spool: Path) -> tuple[int, int]:
    """The spool's segment files: their sizes (zero-filled ends included) and where their logs end."""
    from agent.uplink.spool import codec

    files = log = 0
    for path in spool.glob("seg-*.log"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue  # retired meanwhile
        files += len(data)
        log += codec.scan(data, int(path.name[4:14])).end
    return files, log


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


class LoopDisk:
    """A fresh ext4 file system on a loop device, mounted like a Pi's root (noatime)."""

    def __init__(self, folder: Path, size_mb: int = 1024) -> None:
        self.image = folder / "disk.img"
        self.mnt = folder / "disk"
        self.size_mb = size_mb
        self.device: str | None = None

    @staticmethod
    def unavailable() -> str | None:
        if os.geteuid() != 0:
            return "needs root for a loop device"
        missing = [t for t in ("mkfs.ext4", "losetup", "mount") if shutil.which(t) is None]
        if missing or not Path("/dev/loop-control").exists():
            return f"no loop devices or tools here ({', '.join(missing) or '/dev/loop-control'})"
        return None

    def __enter__(self) -> LoopDisk:
        self.mnt.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as fh:
            fh.truncate(self.size_mb << 20)  # sparse
        # no lazy initialisation: ext4lazyinit would write inode tables during the measurement
        self._run("mkfs.ext4", "-q", "-F", "-b", "4096", "-T", "default",
                  "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.image))  # fmt: skip
        self.device = self._run("losetup", "--find", "--show", str(self.image)).strip()
        self._run("mount", "-o", "noatime", self.device, str(self.mnt))
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], capture_output=True)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
        self.image.unlink(missing_ok=True)

    def written(self) -> int:
        """Bytes written to the device so far (field 7 of /sys/block/<dev>/stat counts sectors)."""
        assert self.device is not None
        return int(Path(f"/sys/block/{Path(self.device).name}/stat").read_text().split()[6]) * 512

    @staticmethod
    def _run(*cmd: str) -> str:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip() or res.returncode}")
        return res.stdout


# -- the files: LazyFS's operation log through a page-cache model -----------------------------------
_OP = re.compile(
    r"^\[([\d-]+ [\d:.]+)\] .*\[lazyfs\.ops\]: lfs_(write|fsync|unlink|rename|truncate)\((.*)\)\s*$"
)
_ARG = re.compile(r"(\w+)=([^,]*)")


def file_class(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if "/spool/seg-" in path:
        return "spool_log"
    if name == "spool.db":  # an older agent's SQLite spool
        return "database"
    if name in ("spool.db-wal", "spool.db-journal"):
        return "wal"
    if name == "spool.db-shm":
        return "shm"
    if "/thumbs/" in path:
        return "thumbnail_index" if name.startswith("index.") else "thumbnail_files"
    return "other"


class PageCache:
    """Which 4 KiB pages reach the device, and when: a page dirtied once or many times between two
    fsyncs of its file goes once; unsynced files go after WRITEBACK_S; deleted files never."""

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = t0, t1
        self.dirty: dict[str, tuple[float, set[int]]] = {}
        self.stats: dict[str, dict[str, int]] = defaultdict(
            lambda: {"writes": 0, "bytes": 0, "fsyncs": 0, "device_pages": 0}
        )
        self.other_files: set[str] = set()

    def _in_window(self, t: float) -> bool:
        return self.t0 <= t < self.t1

    def _flush(self, path: str, t: float) -> None:
        entry = self.dirty.pop(path, None)
        if entry is not None and self._in_window(t):
            self.stats[file_class(path)]["device_pages"] += len(entry[1])

    def op(self, t: float, name: str, args: dict[str, str]) -> None:
        for path, (first, _pages) in list(self.dirty.items()):  # the kernel's periodic writeback
            if t - first >= WRITEBACK_S:
                self._flush(path, first + WRITEBACK_S)
        if name == "rename":
            if args["from"] in self.dirty:
                self.dirty[args["to"]] = self.dirty.pop(args["from"])
            return
        path = args["path"]
        if name == "unlink":
            self.dirty.pop(path, None)  # never written back
            return
        if name == "truncate":
            size = int(args["size"])
            if path in self.dirty:
                first, pages = self.dirty[path]
                self.dirty[path] = (first, {p for p in pages if p * PAGE < size})
            return
        kind = file_class(path)
        if name == "fsync":
            if self._in_window(t):
                self.stats[kind]["fsyncs"] += 1
            self._flush(path, t)
            return
        size, off = int(args["size"]), int(args["off"])
        if self._in_window(t):
            self.stats[kind]["writes"] += 1
            self.stats[kind]["bytes"] += size
            if kind == "other":
                self.other_files.add(path.rsplit("/", 1)[-1])
        if size:
            first, pages = self.dirty.get(path, (t, set()))
            pages.update(range(off // PAGE, (off + size - 1) // PAGE + 1))
            self.dirty[path] = (first, pages)

    def finish(self) -> dict[str, dict[str, int]]:
        for path, (first, _pages) in list(self.dirty.items()):
            self._flush(path, first + WRITEBACK_S)
        return {k: dict(v) for k, v in sorted(self.stats.items())}


def read_lazyfs_log(logs: list[Path], t0: float, t1: float) -> tuple[dict[str, dict[str, int]], list[str]]:
    cache = PageCache(t0, t1)
    for log in logs:
        with log.open(errors="replace") as fh:
            for line in fh:
                if "lazyfs.ops" not in line or "lfs_getattr" in line:
                    continue
                m = _OP.match(line)
                if m:
                    when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                    cache.op(when, m.group(2), dict(_ARG.findall(m.group(3))))
    return cache.finish(), sorted(cache.other_files)
