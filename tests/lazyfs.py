"""LazyFS for power-cut tests: a FUSE file system that keeps every write in its own cache until the
writer fsyncs it, and drops the unsynced rest on command (the tool Jepsen uses; FIELD-NOTES).

`kill -9` alone never tests durability: the kernel's page cache survives the process, so data that
was written but never fsynced is still there for the next process. With the state directory on a
LazyFS mount, `LazyFS.power_cut()` is the real thing: every process with a file open under the
mount is killed with SIGKILL, then LazyFS forgets every byte that was not fsynced. `arm_crash()`
instead lets LazyFS kill itself at a chosen file-system call (e.g. just before the fsync of the
spool's write-ahead log: a power cut in the middle of a commit); `recover()` then kills the writers
and mounts the same backing directory again, whose content is exactly what had been fsynced.

What LazyFS does not model (upstream's design): directory operations (create, rename, unlink) reach
the backing directory at once, so a file created but never fsynced survives a cut, empty; and
synced data is never torn. Both make it gentler than a real SD card, never harsher.

Built from ../shared/tools/lazyfs with its `build` script into a cache directory outside the
checkout (`$VIGIL_LAZYFS_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/vigil-lazyfs`); `./scripts/setup`
builds it, and `lazyfs_binary()` builds it on first use when setup has not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import SHARED

TOOL = SHARED / "tools" / "lazyfs"
CLEARED = "cache is cleared"  # LazyFS's log line once `lazyfs::clear-cache` has dropped the unsynced data
CRASH_ARMED = "received: VALID crash fault"
RUNNING = "waiting for fault commands"


class LazyFSUnavailable(RuntimeError):
    """LazyFS cannot run here (no shared tool, no /dev/fuse, a failed build); the message says why."""


def build_dir() -> Path:
    explicit = os.environ.get("VIGIL_LAZYFS_DIR")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vigil-lazyfs"


def lazyfs_binary() -> Path:
    """Build LazyFS (once; the build script reuses a finished build) and return its binary."""
    script = TOOL / "build"
    if not script.exists():
        raise LazyFSUnavailable(f"{script} is absent (CI always has ../shared/tools/lazyfs)")
    if not os.path.exists("/dev/fuse"):
        raise LazyFSUnavailable("/dev/fuse is absent: this machine cannot mount FUSE file systems")
    out = build_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    # parallel test workers may ask at once: one builds, the others wait and reuse its build
    with open(out.parent / "vigil-lazyfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = subprocess.run([str(script), str(out)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise LazyFSUnavailable(f"building LazyFS failed (exit {res.returncode}): {res.stderr[-2000:]}")
    binary = Path(res.stdout.strip().splitlines()[-1])
    if not os.access(binary, os.X_OK):
        raise LazyFSUnavailable(f"the LazyFS build did not produce {binary}")
    if shutil.which("fusermount3") is None:
        raise LazyFSUnavailable("fusermount3 is missing (Debian package fuse3; ./scripts/setup installs it)")
    return binary


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_dead(pids: Iterable[int], timeout: float = 20.0) -> None:
    """Until every pid has exited (a pidfd becomes readable when its process ends: no polling)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            left = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready and _pid_alive(pid):
                raise TimeoutError(f"process {pid} still runs {timeout}s after SIGKILL")
        finally:
            os.close(fd)


@dataclass
class Cut:
    """One power cut: whom it killed and how (`clear`: cache dropped on command; `crash`: LazyFS died
    at the armed call, see `fault`)."""

    kind: str
    killed: list[int]
    fault: str = ""
    frozen: bool = False  # crash: the writers were stopped before they could see the file system fail
    at: float = field(default_factory=time.monotonic)


class LazyFS:
    """One LazyFS mount over a backing directory (`root`), with its config, fault FIFO and log.

    `with LazyFS(folder) as fs:` mounts `fs.mnt`; everything written under it is cached by LazyFS
    until fsynced. Not thread-safe: one test drives one mount.
    """

    def __init__(
        self,
        folder: Path,
        *,
        cache_mb: int = 64,
        log_all_operations: bool = False,
        binary: Path | None = None,
    ) -> None:
        self.folder = folder
        self.root = folder / "root"  # what is on the "disk": only fsynced data reaches it
        self.mnt = folder / "mnt"
        self.fifo = folder / "faults.fifo"
        self.log = folder / "lazyfs.log"
        self.config = folder / "lazyfs.toml"
        self.binary = binary or lazyfs_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuts: list[Cut] = []
        self.mounts = 0
        self.log_all_operations = log_all_operations
        self._watch: _CrashWatch | None = None
        self._fuse_fds: list[int] = []  # our copies of LazyFS's /dev/fuse: see _hold_fuse_device
        for path in (self.root, self.mnt):
            path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "[faults]\n"
            f'fifo_path = "{self.fifo}"\n'
            "[cache]\n"
            "apply_eviction = false\n"
            "[cache.simple]\n"
            f'custom_size = "{cache_mb}mb"\n'
            "blocks_per_page = 1\n"
            "[filesystem]\n"
            f"log_all_operations = {'true' if log_all_operations else 'false'}\n"
            f'logfile = "{self.log}"\n'
        )

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> LazyFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> LazyFS:
        """Mount over `root` and return once LazyFS takes fault commands and the mount answers."""
        if self.log.exists():  # LazyFS truncates its log when it starts: keep the last one's
            self.log.rename(self.log.with_name(f"{self.log.name}.{self.mounts}"))
        offset = 0
        stdout = (self.folder / "lazyfs.stdout").open("ab")
        # the config path is given relative to the folder: LazyFS ignores a --config-path that
        # contains "-o" anywhere (as pytest's /tmp/pytest-of-root/... does) and looks for its default
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                str(self.mnt),
                "--config-path",
                self.config.name,
                "-f",
                "-o",
                "modules=subdir",
                "-o",
                f"subdir={self.root}",
            ],
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.folder,
        )
        stdout.close()
        self.wait_log(RUNNING, offset, timeout)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mnt):  # FUSE finishes mounting just after the log line
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LazyFSUnavailable(f"LazyFS did not mount {self.mnt}: {self.tail()}")
            time.sleep(0.01)  # an external process coming up, like waiting for a port
        self._fuse_fds = _hold_fuse_device(self.proc.pid)
        self.mounts += 1
        return self

    def stop(self) -> None:
        """Kill whatever still writes under the mount, unmount, end LazyFS."""
        if self.proc is None:
            return
        self.kill_writers()
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _release(self._fuse_fds)
        self._fuse_fds = []
        self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- faults -----------------------------------------------------------------------------------
    def writers(self) -> list[int]:
        """Processes with a file, a mapping or their working directory under the mount."""
        prefix = str(self.mnt) + "/"
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if self._uses(entry.path, prefix):
                found.append(int(entry.name))
        return found

    @staticmethod
    def _uses(proc_dir: str, prefix: str) -> bool:
        with contextlib.suppress(OSError):
            if (os.readlink(f"{proc_dir}/cwd") + "/").startswith(prefix):
                return True
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"{proc_dir}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path).startswith(prefix):
                        return True
        with contextlib.suppress(OSError), open(f"{proc_dir}/maps") as maps:
            return any(prefix in line for line in maps)
        return False

    def kill_writers(self, also: Iterable[int] = ()) -> list[int]:
        """SIGKILL every process using the mount (and the pids in `also`, which may not have opened
        anything under it yet) and wait until each has really exited."""
        killed: list[int] = []
        for _ in range(3):  # a writer might have started a child just before: look again
            pids = [
                pid
                for pid in dict.fromkeys([*also, *self.writers()])
                if pid not in killed and _pid_alive(pid)
            ]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_dead(pids)
            killed += pids
        return killed

    def power_cut(self, also: Iterable[int] = (), timeout: float = 30.0) -> Cut:
        """Pull the plug: kill -9 every writer (and `also`), then drop every unsynced byte."""
        killed = self.kill_writers(also)
        self.command("lazyfs::clear-cache", CLEARED, timeout)
        cut = Cut("clear", killed)
        self.cuts.append(cut)
        return cut

    def arm_crash(
        self,
        op: str,
        path_regex: str,
        timing: str = "before",
        *,
        also: Iterable[int] = (),
        timeout: float = 10.0,
    ) -> str:
        """LazyFS will SIGKILL itself at the next `op` (fsync, write, truncate…) on a path matching
        `path_regex`, `timing` before or after performing it: everything unsynced dies with it.

        A watcher thread then kills every writer at once, as the power that failed would have: a
        process whose file system vanished must not get to act on the error. The pids in `also` (the
        process under test) are killed first, before the others are looked up."""
        fault = f"lazyfs::crash::timing={timing}::op={op}::from_rgx={path_regex}"
        self.command(fault, CRASH_ARMED, timeout)
        if self._watch is None:
            assert self.proc is not None
            self._watch = _CrashWatch(self, self.proc, list(also), self._fuse_fds)
            self._fuse_fds = []  # the watch releases them once the writers are killed
        return fault

    def wait_crash(self, timeout: float) -> bool:
        """Until LazyFS has died at the armed fault and its writers are dead; False after `timeout`."""
        return self._watch is not None and self._watch.done.wait(timeout)

    def disarm(self, also: Iterable[int] = ()) -> Cut:
        """An armed fault that never fired: cut the power anyway and remount, which forgets it."""
        cut = self.power_cut(also)
        self._watch = None  # its thread ends with this LazyFS process, harmlessly
        self.stop()
        self.start()
        return cut

    def recover(self, fault: str = "", also: Iterable[int] = ()) -> Cut:
        """After a crash: unmount the dead mount and mount the same disk again (the cache is gone)."""
        watch = self._watch
        if watch is None or not watch.done.wait(30):
            raise RuntimeError("recover() is for a LazyFS that crashed at an armed fault")
        self._watch = None
        killed = watch.killed + self.kill_writers(also)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        self.proc = None
        self.start()
        cut = Cut("crash", killed, fault, watch.frozen)
        self.cuts.append(cut)
        return cut

    def command(self, text: str, expect: str | None = None, timeout: float = 30.0) -> None:
        """Write one command line to the fault FIFO; with `expect`, wait for that log line after it."""
        offset = self._log_size()
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)  # LazyFS keeps its end open
        try:
            os.write(fd, (text + "\n").encode())
        finally:
            os.close(fd)
        if expect is not None:
            self.wait_log(expect, offset, timeout)

    # -- the log ----------------------------------------------------------------------------------
    def _log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_log(self, text: str, offset: int, timeout: float) -> None:
        """Until `text` appears in the log after byte `offset` (LazyFS's only acknowledgement)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError), self.log.open("rb") as fh:
                fh.seek(offset)
                if text.encode() in fh.read():
                    return
            if self.proc is not None and self.proc.poll() is not None:
                raise LazyFSUnavailable(
                    f"LazyFS exited ({self.proc.returncode}) before {text!r}: {self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in {self.log} within {timeout}s: {self.tail()}")
            time.sleep(0.005)  # LazyFS answers only in its log file; poll it briefly

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class _CrashWatch:
    """Waits for one LazyFS process to die at an armed fault, then kills the mount's writers.

    While we hold a copy of LazyFS's /dev/fuse descriptor the kernel keeps the connection open after
    LazyFS dies: a writer's call on the mount then hangs instead of failing, so it never runs another
    line of its own code. It is killed in that state; only then are the descriptors closed, which
    aborts the connection and lets the killed process finish dying."""

    def __init__(
        self, fs: LazyFS, proc: subprocess.Popen[bytes], first: list[int], fuse_fds: list[int]
    ) -> None:
        self.done = threading.Event()
        self.killed: list[int] = []
        self.frozen = bool(fuse_fds)  # False: the writers saw the error for a moment before the kill
        self._fs = fs
        self._proc = proc
        self._first = first
        self._fuse_fds = fuse_fds
        threading.Thread(target=self._run, name="lazyfs-crash-watch", daemon=True).start()

    def _run(self) -> None:
        self._proc.wait()
        signalled: list[int] = []
        for pid in [*self._first, *self._fs.writers()]:  # the known ones first: no /proc scan before them
            if pid not in signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                signalled.append(pid)
        _release(self._fuse_fds)  # aborts the connection: the killed writers can finish dying
        wait_dead(signalled)
        self.killed = signalled + [p for p in self._fs.kill_writers() if p not in signalled]
        self.done.set()


_SYS_PIDFD_GETFD = 438  # the same number on x86-64, arm64 and every architecture of the generic table


def _hold_fuse_device(pid: int) -> list[int]:
    """Copies (pidfd_getfd, Linux 5.6+, needs ptrace rights: root) of the /dev/fuse descriptors of
    LazyFS process `pid`; empty when the kernel or our rights do not allow it."""
    import ctypes

    wanted = []
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(fd.path) == "/dev/fuse":
                    wanted.append(int(fd.name))
    if not wanted:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return []
    try:
        for target in wanted:
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, target, 0)
            if fd < 0:
                _release(held)
                return []
            held.append(fd)
    finally:
        os.close(pidfd)
    return held


def _release(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
