"""`model/update`: fetch, verify, load, swap, watch, keep or roll back, on its own `model-update` thread.

1. The file comes from a URL (agent.fetch: http(s) only, `control.model_hosts` when set,
   bounded by the updates folder's cap and the spool's room, resumes a cut download, deletes a
   wrong file; every failure is the same message to the requester, the reason goes to the log) or
   from a file in the import folder (`control.model_import_dir`, verified and copied the same way),
   into ``<state_dir>/models/updates/``, where models not in use are deleted to make room.
2. Its card comes from the request, a card beside the imported file, or the model manifest (by sha256).
3. It is loaded in a fresh onnxruntime session and run once on the newest frame; failure refuses
   the update and the running model never stops.
4. It is swapped in atomically (Pipeline.swap_detector) behind a probation guard. If it raises, the
   previous model is back at once; if it produces nothing in `model_probation_frames` detector runs
   while the previous model found objects in its last runs, it is rolled back.
5. Kept: `detect.model` is persisted (agent.control.persist) and the change is audited.
The reply is sent when the outcome is known (downloads over LTE take a while; other commands are
served meanwhile).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import fetch, models
from agent.control.jobs import BackgroundCommand, Cancelled
from agent.control.live import apply_detect
from agent.control.protocol import CommandError
from agent.detect import CardError, Detection, Detector
from agent.detect.card import ModelInfo, card_path_for, parse_card
from agent.detect.detector import detector_from_config
from agent.fetch import FetchError, FetchPolicy, sha256_file
from agent.urls import hide_userinfo

if TYPE_CHECKING:
    from agent.app import Running
    from agent.control.persist import ConfigStore
    from agent.health.frames import FrameTap
    from agent.privacy import AuditLog
    from agent.services import ConfigHost

log = logging.getLogger(__name__)

KEEPS = "the previous model stays"
DOWNLOAD_FAILED = f"model {fetch.GENERIC}; {KEEPS}"  # what the requester hears of any network failure
PART_MAX_AGE_S = 86400.0  # a partial download older than this is not resumed but deleted


class ProbationDetector(Detector):
    """Runs the new model and counts what it does; after its first exception it answers with the
    previous model until the updater swaps that back in (the analysis loop never sees the error)."""

    def __init__(self, inner: Detector, previous: Detector) -> None:
        self.inner = inner
        self.previous = previous
        self.card, self.sha256, self.path = inner.card, inner.sha256, inner.path
        self.runs = 0
        self.detections = 0
        self.error: str | None = None
        self.changed = threading.Condition()

    def detect(self, image: np.ndarray) -> list[Detection]:
        if self.error is not None:
            return self.previous.detect(image)
        try:
            found = self.inner.detect(image)
        except Exception as exc:
            with self.changed:
                self.error = f"{type(exc).__name__}: {exc}"
                self.changed.notify_all()
            log.error("new model failed on a frame: %s", self.error)
            return self.previous.detect(image)
        with self.changed:
            self.runs += 1
            self.detections += len(found)
            self.changed.notify_all()
        return found

    @property
    def frames(self) -> int:
        return int(getattr(self.inner, "frames", self.runs))

    @property
    def inference_ms(self) -> Any:
        return getattr(self.inner, "inference_ms", ())

    @property
    def score_threshold(self) -> Any:
        return getattr(self.inner, "score_threshold", None)

    def info(self) -> ModelInfo:
        return self.inner.info()


class ModelUpdater(BackgroundCommand):
    what = "model update"
    keeps = KEEPS
    thread_name = "model-update"

    def __init__(
        self,
        host: ConfigHost,
        running: Running,
        tap: FrameTap,
        store: ConfigStore,
        audit: Callable[[], AuditLog],
    ) -> None:
        super().__init__()
        self.host = host  # the running config; the new model's path is swapped into it once it passes
        self.running = running
        self.tap = tap
        self.store = store
        self._audit = audit
        try:
            self.import_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("model/update: cannot create the import folder %s: %s", self.import_dir, exc)
        for leftover in self.updates_dir.glob("*.rejected") if self.updates_dir.is_dir() else ():
            leftover.unlink(missing_ok=True)  # older agents kept refused downloads

    def wake(self) -> None:
        guard = getattr(self.running.pipeline.detector, "changed", None)
        if guard is not None:
            with guard:
                guard.notify_all()

    # -- where files go, and how much room they get -----------------------------------------------------
    @property
    def updates_dir(self) -> Path:
        return self.running.state_dir / "models" / "updates"

    @property
    def import_dir(self) -> Path:
        configured = self.host.config.control.model_import_dir
        return (configured or self.running.state_dir / "models" / "import").expanduser()

    def _in_use(self) -> set[Path]:
        """Model files (and their cards) that must stay: the running model and the configured one."""
        keep: set[Path] = set()
        detector = self.running.pipeline.detector
        for candidate in (getattr(detector, "path", None), self.host.config.detect.model):
            if candidate:
                path = Path(str(candidate)).expanduser()
                keep |= {path.resolve(), card_path_for(path).resolve()}
        return keep

    def _prune(self, dest: Path) -> None:
        """Delete what the updates folder holds besides the models in use and `dest` (with the
        `.part` of `dest` for a resume, if it is less than a day old): rejected files, other partial
        downloads, models no longer used. The folder never holds more than one update's leftovers."""
        keep = self._in_use() | {dest.resolve(), card_path_for(dest).resolve()}
        part = dest.with_name(dest.name + ".part")
        if part.exists() and time.time() - part.stat().st_mtime < PART_MAX_AGE_S:
            keep.add(part.resolve())
        for path in self.updates_dir.glob("*") if self.updates_dir.is_dir() else ():
            if path.is_file() and path.resolve() not in keep:
                log.info("model/update: deleting %s (not in use)", path.name)
                path.unlink(missing_ok=True)

    def _policy(self, dest: Path) -> FetchPolicy:
        cfg = self.host.config
        cap = int(cfg.control.model_updates_max_mb * 1024 * 1024)
        part = dest.with_name(dest.name + ".part")
        room = cap - fetch.usage(self.updates_dir, skip=[part])
        spool = self.running.spool
        floor = int(cfg.spool.free_floor_mb * 1024 * 1024)
        budget = int(cfg.spool.budget_mb * 1024 * 1024)

        def reserve() -> int:  # the spool may still grow to its budget above its free-space floor
            return floor + max(0, budget - spool.disk_bytes())

        return FetchPolicy(hosts=tuple(cfg.control.model_hosts), max_bytes=max(0, room), reserve=reserve)

    def _import_path(self, text: str) -> Path:
        """A file inside the import folder (symbolic links resolved); nothing else on the node."""
        root = self.import_dir.resolve()
        candidate = Path(text).expanduser()
        real = Path(os.path.realpath(candidate if candidate.is_absolute() else root / candidate))
        if root not in real.parents:
            raise CommandError(
                f"path must name a file in the import folder {root} (control.model_import_dir); "
                "copy the model there first"
            )
        if not real.is_file():
            raise CommandError(f"no model file {real.relative_to(root)} in the import folder {root}")
        return real

    # -- the steps ----------------------------------------------------------------------------------
    def _fetch(self, args: Any) -> Path:
        source = self._import_path(args.path) if args.path else None
        name = args.name or (source.stem if source is not None else "model")
        dest = self.updates_dir / f"{name}-{args.sha256[:12]}.onnx"
        self.updates_dir.mkdir(parents=True, exist_ok=True)
        self._prune(dest)
        if dest.is_file() and sha256_file(dest) == args.sha256:
            return dest
        policy = self._policy(dest)
        if args.url:

            def progress(_done: int, _total: int | None) -> None:
                if self.cancelled:
                    raise Cancelled

            try:
                return fetch.download(args.url, dest, args.sha256, policy, progress=progress)
            except FetchError as exc:
                log.warning("model/update from %s failed: %s", hide_userinfo(args.url), exc.detail)
                public = DOWNLOAD_FAILED if str(exc) == fetch.GENERIC else f"{exc}; {KEEPS}"
                raise CommandError(public) from None
        assert source is not None
        try:
            fetch.copy_verified(source, dest, args.sha256, policy)
        except FetchError as exc:
            log.warning("model/update from %s refused: %s", source, exc.detail)
            raise CommandError(f"{exc}; {KEEPS}") from None
        beside = card_path_for(source)
        if beside.is_file() and args.card is None and beside.resolve().parent == source.parent:
            shutil.copyfile(beside, card_path_for(dest))
        return dest

    def _card(self, args: Any, dest: Path) -> None:
        if args.card is None:
            return  # beside the file already, or in the manifest; load_detector says if neither
        card = parse_card(args.card, "in the model/update request")
        card = card.model_copy(update={"sha256": args.sha256})
        models.write_card(card_path_for(dest), card)

    def _load(self, dest: Path) -> Detector:
        try:
            detector = detector_from_config(dest, self.host.config.detect)
        except (CardError, ValueError) as exc:
            raise CommandError(f"the new model does not load: {exc}; the previous model stays") from None
        wanted = self.host.config.detect.classes
        if wanted and not set(wanted) & set(detector.card.labels):
            detector.close()
            raise CommandError(
                f"the new model {detector.card.name} knows none of detect.classes ({', '.join(wanted)}; it knows "
                f"{', '.join(detector.card.labels)}): it would detect nothing; the previous model stays"
            )
        latest = self.tap.latest()
        if latest is not None:
            try:
                detector.detect(latest.frame.image)
            except Exception as exc:
                detector.close()
                raise CommandError(
                    f"the new model fails on a frame ({type(exc).__name__}: {exc}); the previous model stays"
                ) from None
        return detector

    def work(self, args: Any, actor: str) -> tuple[str, dict[str, Any]]:
        self._audit().record(
            "model.update_requested", actor, {"url": args.url, "path": args.path, "sha256": args.sha256}
        )
        running_model = self.running.pipeline.detector
        if running_model.sha256 == args.sha256:
            return "this model is already running; nothing changed", {"model": running_model.info()}
        dest = self._fetch(args)
        if self.cancelled:
            raise Cancelled
        self._card(args, dest)
        new = self._load(dest)
        pipeline = self.running.pipeline
        current = pipeline.detector
        if new.sha256 == current.sha256:
            new.close()
            return "this model is already running; nothing changed", {"model": new.info()}
        probation_runs = self.host.config.control.model_probation_frames
        baseline = list(self.tap.recent_counts)[-probation_runs:]
        guard = ProbationDetector(new, current)
        pipeline.swap_detector(guard)
        self.running.detector = guard  # events name the model that found them
        log.info(
            "model %s (%s…) on probation for %d detector runs", new.name, new.sha256[:12], probation_runs
        )
        verdict = self._watch(guard, probation_runs, sum(baseline))
        if verdict is not None:
            self._roll_back(guard, current)
            new.close()
            self._audit().record("model.rolled_back", actor, {"to": current.info(), "reason": verdict})
            raise CommandError(f"rolled back to {current.name}: {verdict}", {"model": current.info()})
        try:
            persisted = self.store.save({"detect.model": str(dest)})
        except Exception as exc:
            self._roll_back(guard, current)
            new.close()
            raise CommandError(
                f"could not persist detect.model ({exc}); rolled back to {current.name}"
            ) from None
        apply_detect(new, self.host.config)  # thresholds changed live during probation
        pipeline.swap_detector(new)
        self.running.detector = new
        with pipeline.lock:  # config/set swaps the config under the same lock
            config = self.host.config
            detect = config.detect.model_copy(update={"model": str(dest)})
            self.host.use_config(config.model_copy(update={"detect": detect}))
        current.close()
        details = {
            "from": current.info(),
            "to": new.info(),
            "runs": guard.runs,
            "detections": guard.detections,
        }
        self._audit().record("model.change", actor, details)
        log.info("model %s (%s…) is now in use", new.name, new.sha256[:12])
        return (
            f"model {new.name} ({new.sha256[:12]}…) in use after {guard.runs} detector runs "
            f"({guard.detections} detections)",
            {"model": new.info(), "path": str(dest), "persisted_to": str(persisted), **details},
        )

    def _watch(self, guard: ProbationDetector, runs: int, baseline: int) -> str | None:
        """None when the new model passed probation, else why it is rolled back."""
        deadline = time.monotonic() + self.host.config.control.model_probation_timeout_s
        with guard.changed:
            while guard.error is None and guard.runs < runs:
                if self.cancelled:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                guard.changed.wait(min(remaining, 0.5))
        if guard.error is not None:
            return f"the new model failed on a frame ({guard.error})"
        if self.cancelled:
            return "the agent is stopping before the new model finished its probation"
        if guard.runs == 0:
            return "the new model was never run (no frames) before model_probation_timeout_s"
        if guard.detections == 0 and baseline > 0:
            return (
                f"the new model produced nothing in {guard.runs} detector runs where the previous one "
                f"found {baseline} objects in its last runs"
            )
        return None

    def _roll_back(self, guard: ProbationDetector, previous: Detector) -> None:
        pipeline = self.running.pipeline
        apply_detect(previous, self.host.config)
        if pipeline.detector is guard:
            pipeline.swap_detector(previous)
        self.running.detector = previous
        log.warning("model update rolled back to %s", previous.name)
