"""Release slots on a node and the launcher that starts the right one. Standard library only.

This module runs where nothing else of Vigil can: the node's install step copies it to
/opt/vigil/lib/vigil_slots.py, and both first boot (`/opt/vigil/firstboot`, before any venv exists)
and the systemd service's launcher (`/opt/vigil/launch`, which must work whatever the release it
starts is like) use that copy with the system python3. The agent imports it as agent.update.slots.
It is one file on purpose (copied alone, importing nothing of Vigil), hence its length.

Layout of ``releases`` (/opt/vigil/releases, the only place under /opt the agent's user may write):

    <version>/             one slot: manifest.json(.sig), lock.txt, wheels/, and venv/ built from them
    <version>/.complete    written last, after the venv works: a slot without it is never started
    current -> <version>   what the launcher starts; switched with one atomic rename
    state.json             the probation of a new release, rollbacks, failed versions (under .state.lock)
    .incoming/             downloads (resumable) and the staging folders of installs in progress

/opt/vigil/current is a fixed link to releases/current, so /opt/vigil itself stays root's.
/opt/vigil/venv is an install made before slots existed (pip from the network); with no usable
slot the launcher starts that.

Probation: the agent that installs a release records it in state.json, switches `current` and
exits. Every start of the new release goes through the launcher, which counts it; the new agent
confirms itself once it is connected to the broker and has analysed frames. A release that fails
(its own verdict, too many starts without confirming, or its deadline passed) is rolled back by
the next start: `current` goes back to the previous slot and the rollback waits in state.json for
the previous agent to report it. A guard process started by the launcher stops a release that is
still unconfirmed well after its deadline, whatever that release's own code does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

DEFAULT_RELEASES = Path("/opt/vigil/releases")
RELEASES_ENV = "VIGIL_UPDATE__RELEASES_DIR"  # the agent's config override for update.releases_dir
COMPLETE = ".complete"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
LOCK = "lock.txt"
WHEELS = "wheels"
VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+_-]{0,63}$")
GUARD_GRACE_S = 30.0  # after the deadline, the new agent's own watcher has this long to stop by itself
GUARD_POLL_S = 1.0

Log = Callable[[str], None]


class SlotError(Exception):
    """A slot cannot be verified, built or switched to; the message says which and why."""


def _stderr(message: str) -> None:
    print(f"vigil-slots: {message}", file=sys.stderr, flush=True)


# -- layout ------------------------------------------------------------------------------------------


class Layout:
    """Paths of one node's release area (a temporary folder in tests)."""

    def __init__(self, releases: Path) -> None:
        self.releases = releases
        self.current_link = releases / "current"
        self.state_file = releases / "state.json"
        self.lock_file = releases / ".state.lock"
        self.incoming = releases / ".incoming"
        self.legacy_venv = releases.parent / "venv"

    def slot(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise SlotError(f"{version!r} is not a release version")
        return self.releases / version

    def agent_bin(self, version: str) -> Path:
        return self.slot(version) / "venv" / "bin" / "agent"


def is_complete(slot: Path) -> bool:
    return (slot / COMPLETE).is_file() and (slot / "venv" / "bin" / "agent").exists()


def current(layout: Layout) -> str | None:
    """The version `current` points at, or None (no slot yet: the legacy venv, if any)."""
    try:
        target = os.readlink(layout.current_link)
    except OSError:
        return None
    name = Path(target).name
    return name if VERSION_RE.match(name) else None


def complete_versions(layout: Layout) -> list[str]:
    if not layout.releases.is_dir():
        return []
    return sorted(p.name for p in layout.releases.iterdir() if VERSION_RE.match(p.name) and is_complete(p))


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def switch(layout: Layout, version: str | None) -> None:
    """Point `current` at a complete slot (None: remove it, so the legacy venv runs). Atomic: a new
    link is made beside it and renamed over it; a power cut leaves the old or the new target."""
    if version is None:
        with contextlib.suppress(FileNotFoundError):
            layout.current_link.unlink()
        fsync_dir(layout.releases)
        return
    slot = layout.slot(version)
    if not is_complete(slot):
        raise SlotError(f"release {version} is not completely installed in {slot}; not switching to it")
    tmp = layout.releases / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(version)
    os.replace(tmp, layout.current_link)
    fsync_dir(layout.releases)


# -- state -------------------------------------------------------------------------------------------


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def load_state(layout: Layout) -> dict[str, Any]:
    try:
        data = json.loads(layout.state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _stderr(f"{layout.state_file} is unreadable ({exc}); starting from an empty state")
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def locked_state(layout: Layout) -> Iterator[dict[str, Any]]:
    """Read-modify-write of state.json under a lock (the launcher's guard and the agent both write)."""
    layout.releases.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock_file, os.O_RDONLY | os.O_CREAT, 0o644)  # read-only: whoever made it, all can lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = load_state(layout)
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            write_json(layout.state_file, state)
    finally:
        os.close(fd)  # closing releases the lock


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


# -- verifying and building a slot -------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlotError(f"{folder / MANIFEST}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise SlotError(f"{folder / MANIFEST} is not a release manifest")
    return data


def verify_lock(folder: Path, manifest: dict[str, Any]) -> None:
    """The lock is the one the manifest names. pip --require-hashes then holds every wheel to the lock's
    hashes, so the whole slot is checked without reading 100 MB twice (slow on a Pi's SD card)."""
    meta = manifest["files"].get(LOCK)
    lock = folder / LOCK
    if not isinstance(meta, dict) or not lock.is_file():
        raise SlotError(f"{lock} is missing, or the manifest does not list it")
    if lock.stat().st_size != meta.get("size") or sha256_file(lock) != meta.get("sha256"):
        raise SlotError(f"{lock} does not match the release manifest (sha256 or size differs)")
    missing = [name for name in manifest["files"] if not (folder / name).is_file()]
    if missing:
        raise SlotError(f"files of the release are missing: {', '.join(missing[:5])}")


def pip_env() -> dict[str, str]:
    """The environment of the node's pip: no user or site pip configuration, no index, nothing cached."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run(argv: list[str], what: str, log: Log) -> None:
    log("$ " + " ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=pip_env(), check=False)
    except OSError as exc:
        raise SlotError(f"{what}: {argv[0]}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise SlotError(f"{what} failed (exit {done.returncode}): {tail}")


SYSTEM_WHEELS = Path("/usr/share/python-wheels")  # Debian's python3-pip-whl (python3-venv depends on it)


def build_venv(slot: Path, python: str, log: Log = _stderr) -> None:
    """The slot's own venv, from its wheelhouse and hashed lock only: no index, nothing else.
    --system-site-packages: apt's picamera2 (Raspberry Pi OS) stays visible to the agent. pip runs from
    Debian's pip wheel when there is one, so the slot needs no pip of its own (ensurepip costs more time
    than the install on a Pi), and byte-compiles nothing: the agent compiles what it imports, once."""
    venv = slot / "venv"
    if venv.exists():
        shutil.rmtree(venv)
    pip_wheel = max(SYSTEM_WHEELS.glob("pip-*.whl"), default=None)
    if pip_wheel is not None:
        _run([python, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], "creating the venv", log)
        pip = [str(venv / "bin" / "python"), str(pip_wheel / "pip")]
    else:
        _run([python, "-m", "venv", "--system-site-packages", str(venv)], "creating the venv", log)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
    _run(
        [*pip, "install", "--no-index", "--no-cache-dir", "--no-compile", "--find-links", str(slot / WHEELS),
         "--require-hashes", "--only-binary=:all:", "-r", str(slot / LOCK)],
        "installing the release from its wheelhouse",
        log,
    )
    if not (venv / "bin" / "agent").exists():
        raise SlotError(f"the release installed no `agent` command in {venv}")


def mark_complete(slot: Path, manifest: dict[str, Any]) -> None:
    info = {"version": manifest.get("version"), "installed_at": time.time(), "python": sys.version.split()[0]}
    write_json(slot / COMPLETE, info)


def install_staged(layout: Layout, version: str, python: str, log: Log = _stderr) -> bool:
    """First boot of an image prepared offline: build the venv of the release waiting in its slot and
    make it current. True if something changed; safe to run again (a complete slot is left alone)."""
    slot = layout.slot(version)
    changed = False
    if not is_complete(slot):
        manifest = read_manifest(slot)
        verify_lock(slot, manifest)
        build_venv(slot, python, log)
        mark_complete(slot, manifest)
        changed = True
    if current(layout) != version:
        switch(layout, version)
        with locked_state(layout) as state:
            state["good"] = version
        changed = True
    if changed:
        give_to_owner(layout.releases, layout.releases)  # slot, state and link: the agent's from now on
    return changed


def give_to_owner(tree: Path, of: Path) -> None:
    """Run as root (first boot), hand a slot to the owner of the release area: the agent, which runs as
    its own user, must be able to remove it when it is no longer one of the two kept."""
    if os.geteuid() != 0:
        return
    st = of.stat()
    for folder, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(folder, name), st.st_uid, st.st_gid)
    os.lchown(tree, st.st_uid, st.st_gid)


def staged_versions(layout: Layout) -> list[str]:
    """Slots that hold a release but no working venv yet (an offline image before first boot)."""
    if not layout.releases.is_dir():
        return []
    return sorted(
        p.name
        for p in layout.releases.iterdir()
        if VERSION_RE.match(p.name) and (p / MANIFEST).is_file() and not is_complete(p)
    )


def prune(layout: Layout, keep: set[str]) -> list[str]:
    """Remove every slot but `keep` (and what `current` points at), and stale staging folders."""
    removed: list[str] = []
    keep = keep | {v for v in (current(layout),) if v}
    if not layout.releases.is_dir():
        return removed
    for path in layout.releases.iterdir():
        if path.is_dir() and not path.is_symlink() and VERSION_RE.match(path.name) and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    staging = layout.incoming / "staging"
    if staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(layout.releases)
    return sorted(removed)


# -- the launcher ------------------------------------------------------------------------------------


def _rollback(layout: Layout, state: dict[str, Any], reason: str) -> str | None:
    """Go back from the release on probation to the one it replaced (or the legacy venv)."""
    probation = state.pop("probation")
    failed, previous = str(probation["version"]), probation.get("from")
    target = previous if previous and is_complete(layout.slot(previous)) else None
    state.setdefault("failed", {})[failed] = reason
    if target is None and not (layout.legacy_venv / "bin" / "agent").exists():
        _stderr(f"release {failed} failed its probation ({reason}) but there is nothing to go back to; keeping it")
        return failed
    switch(layout, target)
    state["rollback"] = {
        "from": failed,
        "to": target or "legacy venv",
        "reason": reason,
        "at": time.time(),
        "reported": False,
    }
    _stderr(f"release {failed} rolled back to {target or 'the legacy venv'}: {reason}")
    return target


def _progress_note(probation: dict[str, Any]) -> str:
    progress = probation.get("progress") or {}
    if not progress:
        return "it never reported progress"
    connected = "yes" if progress.get("connected") else "no"
    return f"connected to the broker: {connected}, frames analysed: {progress.get('frames', 0)}"


def prepare_start(layout: Layout) -> tuple[str | None, dict[str, Any] | None]:
    """Decide what to start (rolling back a failed probation first) and count the start.
    Returns (version or None for the legacy venv, the probation record if one is running)."""
    with locked_state(layout) as state:
        running = current(layout)
        probation = state.get("probation")
        if probation is not None and probation.get("version") != running:
            state.pop("probation")  # `current` was changed by hand: that probation is over
            probation = None
        if probation is not None:
            now_boot, now = boot_id(), time.monotonic()
            same_boot = probation.get("boot") == now_boot
            deadline = probation.get("deadline_mono")
            reason = probation.get("failure")
            if reason is None and probation.get("starts", 0) >= probation.get("max_starts", 2):
                reason = (
                    f"release {running} stopped {probation['starts']} time(s) before it confirmed itself "
                    f"({_progress_note(probation)})"
                )
            if reason is None and same_boot and deadline is not None and now > deadline:
                reason = (
                    f"release {running} was not confirmed within {probation.get('timeout_s')} s "
                    f"({_progress_note(probation)})"
                )
            if reason is not None:
                return _rollback(layout, state, reason), None
            probation["starts"] = probation.get("starts", 0) + 1
            if not same_boot or deadline is None:
                probation["boot"] = now_boot
                probation["deadline_mono"] = now + float(probation.get("timeout_s", 600))
        if running is None or not is_complete(layout.slot(running)):
            good = state.get("good")
            fallback = good if good and is_complete(layout.slot(good)) else None
            if running is not None or (fallback and not (layout.legacy_venv / "bin" / "agent").exists()):
                what = f"release {running} is not completely installed" if running else "no current release"
                _stderr(f"{what}; starting {fallback or 'the legacy venv'}")
                switch(layout, fallback)
                running, probation = fallback, None
        return running, (dict(probation) if probation is not None else None)


def _process_start_time(pid: int) -> str | None:
    """When process `pid` started (to tell it from a later one with the same pid); None once it is gone
    or a zombie (exited, not yet reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") or len(fields) < 20 else fields[19]


def _guard(layout: Layout, version: str, pid: int) -> None:
    """Stop release `version` (process `pid`) if it is still unconfirmed GUARD_GRACE_S after its deadline."""
    started = _process_start_time(pid)
    while _process_start_time(pid) == started and started is not None:
        probation = load_state(layout).get("probation")
        if not probation or probation.get("version") != version:
            return  # confirmed or rolled back
        deadline = probation.get("deadline_mono")
        grace = float(probation.get("grace_s", GUARD_GRACE_S))
        if deadline is not None and time.monotonic() > deadline + grace:
            with locked_state(layout) as state:
                record = state.get("probation")
                if record and record.get("version") == version and not record.get("failure"):
                    record["failure"] = (
                        f"release {version} was not confirmed within {record.get('timeout_s')} s and did not "
                        f"stop by itself ({_progress_note(record)})"
                    )
            _stderr(f"release {version} is past its probation deadline; stopping it for a rollback")
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end and _process_start_time(pid) == started:
                time.sleep(GUARD_POLL_S)
            if _process_start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(GUARD_POLL_S)


def _spawn_guard(layout: Layout, version: str) -> None:
    """A detached grandchild (reaped by init, not by the agent) watches this process after exec."""
    pid = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            if os.fork() == 0:
                os.setsid()
                with contextlib.suppress(Exception):
                    _guard(layout, version, pid)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def releases_from(args: list[str]) -> Path:
    """update.releases_dir as the agent will see it: environment, else the --config file, else the default."""
    if os.environ.get(RELEASES_ENV):
        return Path(os.environ[RELEASES_ENV])
    config = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), None)
    if config:
        import tomllib

        with contextlib.suppress(OSError, ValueError):
            value = tomllib.loads(Path(config).read_text(encoding="utf-8")).get("update", {}).get("releases_dir")
            if isinstance(value, str) and value:
                return Path(value)
    return DEFAULT_RELEASES


def launch_main(argv: list[str] | None = None) -> int:
    """The service's ExecStart: roll back a failed probation, then exec the current release's agent."""
    args = list(sys.argv[1:] if argv is None else argv)
    layout = Layout(releases_from(args))
    try:
        version, probation = prepare_start(layout) if layout.releases.is_dir() else (None, None)
    except (OSError, SlotError) as exc:
        _stderr(f"cannot read the release state in {layout.releases} ({exc}); starting the current release")
        version, probation = current(layout), None
    agent_bin = layout.agent_bin(version) if version else layout.legacy_venv / "bin" / "agent"
    if not agent_bin.exists():
        _stderr(f"no agent to start: {agent_bin} does not exist (has first boot run? /opt/vigil/firstboot)")
        return 1
    if probation is not None and version is not None:
        _spawn_guard(layout, version)
    os.environ[RELEASES_ENV] = str(layout.releases)
    os.execv(str(agent_bin), [str(agent_bin), *args])


def launcher_script(lib_dir: str) -> str:
    return (
        "#!/usr/bin/python3 -I\n"
        "# Vigil launcher (written by the installer): rolls back a release that failed its probation,\n"
        "# then starts the current one. See vigil_slots.py beside it.\n"
        "import sys\n"
        f"sys.path.insert(0, {lib_dir!r})\n"
        "import vigil_slots\n"
        "sys.exit(vigil_slots.launch_main())\n"
    )
