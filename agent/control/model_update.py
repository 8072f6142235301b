"""`model/update`: fetch, verify, load, swap, watch, keep or roll back, on its own `model-update` thread.

1. The file comes from a URL (agent.models.download: resumes a cut download, refuses a wrong
   sha256 and keeps a partial file for the next attempt) or from a path on the node (verified and
   copied), into ``<state_dir>/models/updates/``.
2. Its card comes from the request, a card beside the given path, or the model manifest (by sha256).
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

from agent import models
from agent.control.jobs import BackgroundCommand, Cancelled
from agent.control.live import apply_detect
from agent.control.protocol import CommandError
from agent.detect import CardError, Detection, Detector
from agent.detect.card import card_path_for, parse_card, sha256_file

if TYPE_CHECKING:
    from agent.app import Agent, Running
    from agent.control.persist import ConfigStore
    from agent.health.frames import FrameTap
    from agent.privacy import AuditLog

log = logging.getLogger(__name__)

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

    def info(self) -> dict[str, str]:
        return self.inner.info()


class ModelUpdater(BackgroundCommand):
    what = "model update"
    keeps = "the previous model stays"
    thread_name = "model-update"

    def __init__(
        self,
        agent: Agent,
        running: Running,
        tap: FrameTap,
        store: ConfigStore,
        audit: Callable[[], AuditLog],
    ) -> None:
        super().__init__()
        self.agent = agent
        self.running = running
        self.tap = tap
        self.store = store
        self._audit = audit

    def wake(self) -> None:
        guard = getattr(self.running.pipeline.detector, "changed", None)
        if guard is not None:
            with guard:
                guard.notify_all()

    # -- the steps ----------------------------------------------------------------------------------
    def _fetch(self, args: Any) -> Path:
        folder = self.running.state_dir / "models" / "updates"
        name = args.name or (Path(args.path).stem if args.path else "model")
        dest = folder / f"{name}-{args.sha256[:12]}.onnx"
        if dest.is_file() and sha256_file(dest) == args.sha256:
            return dest
        if args.url:

            def progress(_done: int, _total: int | None) -> None:
                if self.cancelled:
                    raise Cancelled

            try:
                return models.download(args.url, dest, args.sha256, progress=progress)
            except models.ModelError as exc:
                raise CommandError(f"{exc}; the previous model stays") from None
        source = Path(args.path)
        if not source.is_file():
            raise CommandError(f"model file not found on the node: {source}")
        got = sha256_file(source)
        if got != args.sha256:
            raise CommandError(
                f"{source} has sha256 {got}, expected {args.sha256}; refused, the previous model stays"
            )
        folder.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(source, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(dest)
        beside = card_path_for(source)
        if beside.is_file() and args.card is None:
            shutil.copyfile(beside, card_path_for(dest))
        return dest

    def _card(self, args: Any, dest: Path) -> None:
        if args.card is None:
            return  # beside the file already, or in the manifest; load_detector says if neither
        card = parse_card(args.card, "in the model/update request")
        card = card.model_copy(update={"sha256": args.sha256})
        models.write_card(card_path_for(dest), card)

    def _load(self, dest: Path) -> Detector:
        from agent.app import detector_from_config

        try:
            detector = detector_from_config(dest, self.agent.config.detect)
        except (CardError, ValueError) as exc:
            raise CommandError(f"the new model does not load: {exc}; the previous model stays") from None
        wanted = self.agent.config.detect.classes
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
        probation_runs = self.agent.config.control.model_probation_frames
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
        apply_detect(new, self.agent.config)  # thresholds changed live during probation
        pipeline.swap_detector(new)
        self.running.detector = new
        self.agent.config.detect.model = str(dest)
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
        deadline = time.monotonic() + self.agent.config.control.model_probation_timeout_s
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
        apply_detect(previous, self.agent.config)
        if pipeline.detector is guard:
            pipeline.swap_detector(previous)
        self.running.detector = previous
        log.warning("model update rolled back to %s", previous.name)
