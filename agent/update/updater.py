"""`agent/update`: download a signed release, verify it, install it into a new slot, switch to it and
restart into it on probation, on its own `agent-update` thread.

1. The release file comes from a URL (agent.fetch.download: resumed after a cut link, retried
   `update.download_attempts` times, capped at `update.max_bytes`, progress replies on cmd_result)
   or from a path on the node, and must have the sha256 of the request.
2. Its signature must verify against the fleet's release key and its manifest must name the
   requested version, this node's architecture and Python, and no downgrade (unless forced).
3. It is unpacked into releases/<version> (every file checked against the signed manifest while it
   is written), and that slot gets its own venv from the release's wheelhouse and hashed lock, with
   no package index. Only then is the slot marked complete; a slot without the mark is never started.
4. The probation is recorded, `current` is switched with one atomic rename, the change is audited,
   the reply sent and the agent exits with EXIT_RESTART; systemd (through the launcher) starts the
   new release, which must confirm itself (agent.update.stage) or is rolled back.
Anything refused or failed before step 4 changes nothing: the running release stays current.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import agent as agent_pkg
from agent import fetch
from agent.control.jobs import BackgroundCommand, Cancelled, Reply
from agent.control.protocol import CommandError
from agent.update import slots
from agent.update.release import (
    Release,
    ReleaseError,
    Trusted,
    check_compatible,
    extract,
    open_release,
)
from agent.urls import hide_userinfo

if TYPE_CHECKING:
    from agent.config.update import UpdateConfig
    from agent.control.args import AgentUpdateArgs, ProgressFn
    from agent.privacy import AuditLog

log = logging.getLogger(__name__)

SPACE_FACTOR = 5  # unpacked wheels plus the venv built from them take about four times the release file
PROGRESS_STEP = 10  # percent between progress replies


def base_python() -> str:
    """The interpreter the running agent's venv was made from (the node's system python3)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / version
    return str(candidate if candidate.exists() else sys.executable)


class AgentUpdater(BackgroundCommand):
    what = "agent update"
    keeps = "the running release stays"
    thread_name = "agent-update"

    def __init__(
        self,
        config: Callable[[], UpdateConfig],
        audit: Callable[[], AuditLog],
        restart: Callable[[str, str], None],
    ) -> None:
        """`config` returns the running `update` section; `restart(actor, reason)` ends the run once the
        new release is current (systemd then starts it)."""
        super().__init__()
        self._config = config
        self._audit = audit
        self._restart = restart
        self._progress: ProgressFn | None = None
        self._last_percent = -PROGRESS_STEP

    def start(self, args: Any, actor: str, reply: Reply, progress: ProgressFn | None = None) -> None:
        self._progress = progress
        super().start(args, actor, reply)

    @property
    def cfg(self) -> UpdateConfig:
        return self._config()

    def _say(self, message: str, data: dict[str, Any]) -> None:
        log.info("agent update: %s", message)
        if self._progress is not None:
            self._progress(message, data)

    # -- the steps ----------------------------------------------------------------------------------
    def work(self, args: AgentUpdateArgs, actor: str) -> tuple[str, dict[str, Any]]:
        running = agent_pkg.__version__
        source = {"url": args.url, "path": args.path, "sha256": args.sha256, "version": args.version}
        self._audit().record(
            "agent.update_requested", actor, {**source, "running": running, "force": args.force}
        )
        if args.version == running and not args.force:
            return f"release {running} is already running; nothing changed", {"version": running}
        layout = slots.Layout(self.cfg.releases_dir)
        previous = slots.current(layout)
        pending = slots.load_state(layout).get("probation") if layout.releases.is_dir() else None
        if pending and pending.get("version") == previous:
            # its own fallback would be pruned to make room: let it pass (or fail) its probation first
            raise CommandError(
                f"release {previous} is still on probation; send the update again once it is confirmed "
                "(watch for agent_updated)"
            )
        try:
            trusted = Trusted.load(self.cfg.public_key)
            path = self._fetch(args, layout)
            release = open_release(path, trusted)
            check_compatible(release, requested=args.version, running=running, force=args.force)
            if self.cancelled:
                raise Cancelled
            self._install(layout, release, previous)
        except ReleaseError as exc:
            self._audit().record("agent.update_refused", actor, {**source, "reason": str(exc)})
            raise CommandError(f"{exc}; the running release {running} stays") from None
        except slots.SlotError as exc:
            self._audit().record("agent.update_install_failed", actor, {**source, "reason": str(exc)})
            raise CommandError(
                f"release {args.version} could not be installed: {exc}; the running release {running} stays"
            ) from None
        probation = {
            "version": release.version,
            "from": previous,
            "timeout_s": self.cfg.probation_timeout_s,
            "frames": self.cfg.probation_frames,
            "max_starts": self.cfg.probation_starts,
            "starts": 0,
            "actor": actor,
            "requested_at": time.time(),
        }
        with slots.locked_state(layout) as state:  # first the probation, then the switch (power cuts)
            state["probation"] = probation
            if previous is not None:
                state["good"] = previous  # running, and not on probation: what a rollback goes back to
        slots.switch(layout, release.version)
        if args.url:
            path.unlink(missing_ok=True)
        slot = str(layout.slot(release.version))
        details = {"from": previous or f"{running} (legacy venv)", "to": release.summary(), "slot": slot}
        self._audit().record("agent.update_installed", actor, details)
        return (
            f"release {release.version} installed in {slot}; restarting into it on probation "
            f"(it must connect and analyse {self.cfg.probation_frames} frames within "
            f"{self.cfg.probation_timeout_s:g} s, or the next start rolls back to {previous or running})",
            {"version": release.version, "from": previous or running, "probation": probation},
        )

    def succeeded(self, args: Any, actor: str, data: dict[str, Any]) -> None:
        if data.get("probation"):
            self._restart(actor, f"agent update to {data['version']}")

    def _fetch(self, args: AgentUpdateArgs, layout: slots.Layout) -> Path:
        if args.path is not None:
            path = Path(args.path)
            if not path.is_file():
                raise ReleaseError(f"release file not found on the node: {path}")
            if path.stat().st_size > self.cfg.max_bytes:
                raise ReleaseError(f"{path} is larger than update.max_bytes ({self.cfg.max_bytes}); refused")
            got = fetch.sha256_file(path)
            if got != args.sha256:
                raise ReleaseError(f"{path} has sha256 {got}, expected {args.sha256}; refused")
            return path
        assert args.url is not None
        dest = layout.incoming / f"release-{args.sha256[:16]}.tar"
        if dest.is_file() and fetch.sha256_file(dest) == args.sha256:
            return dest
        self._last_percent = -PROGRESS_STEP
        attempts = self.cfg.download_attempts
        for attempt in range(1, attempts + 1):
            try:
                return fetch.download(
                    args.url,
                    dest,
                    args.sha256,
                    fetch.FetchPolicy(max_bytes=self.cfg.max_bytes),
                    progress=self._on_bytes,
                    timeout=self.cfg.download_timeout_s,
                )
            except fetch.FetchError as exc:
                log.warning("agent/update download from %s: %s", hide_userinfo(args.url), exc.detail)
                if not exc.resumable or attempt == attempts:
                    raise ReleaseError(str(exc)) from None
                wait = min(2.0**attempt, 60.0)
                self._say(
                    f"download interrupted; attempt {attempt + 1} of {attempts} in {wait:g} s",
                    {"stage": "download", "attempt": attempt, "kept_bytes": exc.kept},
                )
                if self._cancel.wait(wait):
                    raise Cancelled from None
        raise AssertionError("unreachable")

    def _on_bytes(self, done: int, total: int | None) -> None:
        if self.cancelled:
            raise Cancelled
        if not total:
            return
        percent = int(done * 100 / total)
        if percent >= self._last_percent + PROGRESS_STEP or done == total:
            self._last_percent = percent
            self._say(
                f"downloading: {percent}% of {total} bytes",
                {"stage": "download", "bytes": done, "total": total, "percent": percent},
            )

    def _install(self, layout: slots.Layout, release: Release, previous: str | None) -> None:
        """Unpack and build the new slot; any failure removes it and leaves everything else as it was."""
        slot = layout.slot(release.version)
        if release.version == previous:
            raise CommandError(f"release {release.version} is the current slot already; nothing changed")
        layout.releases.mkdir(parents=True, exist_ok=True)
        slots.prune(layout, keep={v for v in (previous,) if v})  # room for the new slot: keep the running one
        free = shutil.disk_usage(layout.releases).free
        needed = release.path.stat().st_size * SPACE_FACTOR
        if free < needed:
            raise CommandError(
                f"not enough space in {layout.releases} for release {release.version}: {free} bytes free, about "
                f"{needed} needed; the running release stays"
            )
        self._say(
            f"release {release.version}: signature and manifest verified; unpacking and installing it",
            {"stage": "install", **release.summary()},
        )
        try:
            extract(release, slot)
            slots.build_venv(
                slot, str(self.cfg.python or base_python()), log=lambda line: log.info("%s", line)
            )
            slots.mark_complete(slot, release.manifest)
        except BaseException:
            shutil.rmtree(slot, ignore_errors=True)  # never half a slot (it would not start anyway)
            raise
