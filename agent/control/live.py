"""Live configuration: `config/get` and `config/set` for the runtime-tunable subset.

`config/set` takes dotted keys (`{"values": {"detect.score_threshold": 0.5, "rules": {...}}}`),
validates the whole resulting configuration with the same pydantic schema as the file, applies it
without a restart, persists it (agent.control.persist) and rolls everything back if any step fails,
so a refused change leaves the node exactly as it was.

Config sections are never edited in place: the validated new `Config` replaces the agent's in one
assignment, and every object that keeps its own copy of a setting is told through its own
`reconfigure(section)`. `LiveConfig.owners` is the table from a setting's prefix to that call: the
rules and privacy stages (audited there), the tamper stage, the detector's thresholds and classes,
the motion gate, the pipeline's analysis rate cap and event settings, and the publisher's byte
budget. What is read from the agent's config at each use (telemetry) needs no entry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from agent.config.loader import ConfigError, redact_secrets, validate
from agent.config.schema import Config
from agent.control.persist import ConfigStore, set_path
from agent.control.protocol import CommandError
from agent.control.tunable import NOT_LIVE, TUNABLE, gpio_problems, is_tunable
from agent.detect.detector import Detector, class_problem

if TYPE_CHECKING:
    from agent.pipeline import Pipeline
    from agent.privacy import AuditLog
    from agent.services import Services

log = logging.getLogger(__name__)

MAX_KEYS = 64

Undo = Callable[[], None]

# Tunable settings nothing copies: their readers look at the agent's config at each use (the health
# stage's telemetry loop), so swapping the config is all a change needs.
READ_AT_USE: tuple[str, ...] = ("telemetry",)


def get_path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


@dataclass(frozen=True)
class Owner:
    """Who keeps its own copy of the settings under `prefix`, and how to hand it a new config.

    `stage` names the optional stage that must be running for the change to be possible (None: the
    owner is always there). `between_frames` owners are told while the pipeline's lock is held, at
    the moment the new config replaces the old one.
    """

    prefix: str
    reconfigure: Callable[[Config, str], None]  # (the config to take settings from, actor)
    stage: str | None = None
    between_frames: bool = False


def current_detector(pipeline: Pipeline) -> Detector:
    """The detector that holds the thresholds (inside a model update's probation wrapper, if any)."""
    detector = pipeline.detector
    inner = getattr(detector, "inner", None)
    return inner if isinstance(inner, Detector) else detector


class LiveConfig:
    def __init__(
        self,
        *,
        config: Callable[[], Config],
        swap: Callable[[Config], None],
        origins: Mapping[tuple[str, ...], str],
        pipeline: Pipeline,
        services: Services,
        store: ConfigStore,
        audit: Callable[[], AuditLog],
    ) -> None:
        self._config = config  # the agent's config now
        self._swap = swap  # replaces the agent's config (one assignment)
        self.origins = origins
        self.pipeline = pipeline
        self.services = services
        self.store = store
        self._audit = audit
        self.owners: tuple[Owner, ...] = (
            Owner("rules", self._rules, stage="rules"),
            Owner("privacy.masks", self._privacy, stage="privacy"),
            Owner("tamper", self._tamper, stage="tamper"),
            Owner("detect", lambda c, _: current_detector(pipeline).reconfigure(c.detect), between_frames=True),
            Owner("motion", lambda c, _: pipeline.gate.reconfigure(c.motion), between_frames=True),
            Owner("capture.fps", lambda c, _: pipeline.limit_rate(c.capture.fps), between_frames=True),
            Owner("events", lambda c, _: pipeline.reconfigure(c.events), between_frames=True),
            Owner("uplink", self._uplink, between_frames=True),
        )

    def _rules(self, cfg: Config, actor: str) -> None:
        assert self.services.rules is not None  # _require_stages checked it
        self.services.rules.reconfigure(cfg.rules, actor=actor)

    def _privacy(self, cfg: Config, actor: str) -> None:
        assert self.services.privacy is not None
        self.services.privacy.reconfigure(cfg.privacy, actor=actor)

    def _tamper(self, cfg: Config, actor: str) -> None:
        assert self.services.tamper is not None
        self.services.tamper.reconfigure(cfg.tamper)

    def _uplink(self, cfg: Config, actor: str) -> None:
        publisher = self.services.publisher
        if publisher is not None:  # without a broker there is no budget to change
            publisher.reconfigure(cfg.uplink)

    # -- config/get ---------------------------------------------------------------------------------
    def get(self, keys: list[str] | None) -> dict[str, Any]:
        data = redact_secrets(self._config().model_dump(mode="json"))
        if keys:
            try:
                data = {k: get_path(data, k) for k in keys}
            except KeyError as exc:
                raise CommandError(f"no config key {exc.args[0]!r}") from None
        return {
            "config": data,
            "tunable": list(TUNABLE),
            "not_live": list(NOT_LIVE),
            "persist_to": str(self.store.target),
        }

    # -- config/set ---------------------------------------------------------------------------------
    def set(self, values: Mapping[str, Any], actor: str) -> dict[str, Any]:
        if not values:
            raise CommandError("nothing to set: args.values is empty")
        if len(values) > MAX_KEYS:
            raise CommandError(f"too many keys ({len(values)}); at most {MAX_KEYS} per request")
        refused = sorted(k for k in values if not is_tunable(k))
        if refused:
            raise CommandError(
                f"not tunable live: {', '.join(refused)} (tunable: {', '.join(TUNABLE)}; "
                f"not {', '.join(NOT_LIVE)}); change the config file and restart instead"
            )
        before = self._config()
        data = before.model_dump(mode="json")
        for key, value in values.items():
            set_path(data, key, value)
        try:
            after = validate(data, {tuple(k.split(".")): "config/set" for k in values})
        except ConfigError as exc:
            raise CommandError(
                "invalid: " + "; ".join(f"{i.path} = {i.value!r}: {i.reason}" for i in exc.issues[:8])
            ) from None
        old_dump, new_dump = before.model_dump(mode="json"), after.model_dump(mode="json")
        changed = [k for k in values if get_path(old_dump, k) != get_path(new_dump, k)]
        if not changed:
            return {
                "changed": [],
                "persisted_to": None,
                "notes": ["no change: the values are already in effect"],
            }
        self._require_stages(changed)
        self._require_known_classes(changed, after)
        self._require_allowed_gpio(changed, before, after)
        undo: list[Undo] = []
        try:
            self._apply(changed, before, after, actor, undo)
            persisted = self.store.save({k: get_path(new_dump, k) for k in changed})
        except Exception as exc:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("rolling back a live config change failed")
            if isinstance(exc, CommandError):
                raise
            reason = "; ".join(str(i) for i in exc.issues) if isinstance(exc, ConfigError) else str(exc)
            raise CommandError(
                f"could not apply or persist the change ({reason}); rolled back, nothing changed"
            ) from None
        details: dict[str, Any] = {"keys": changed, "persisted_to": str(persisted)}
        small = {k: get_path(new_dump, k) for k in changed if len(json.dumps(get_path(new_dump, k))) <= 200}
        if small:
            details["values"] = small
        self._audit().record("config.change", actor, details)
        log.info("config/set by %s: %s", actor, ", ".join(changed))
        return {"changed": changed, "persisted_to": str(persisted), "notes": self._notes(changed)}

    def _require_stages(self, keys: list[str]) -> None:
        for owner in self.owners:
            if owner.stage is None or owner.stage in self.services:
                continue
            if any(under(k, owner.prefix) for k in keys):
                raise CommandError(
                    f"{owner.prefix} cannot change live: the {owner.stage} stage is not running on this node"
                )

    def _require_known_classes(self, keys: list[str], after: Config) -> None:
        """Classes the running model cannot output are a typo or the wrong model: refuse them rather than
        let the node silently stop reporting what the operator asked for."""
        if "detect.classes" not in keys or not after.detect.classes:
            return
        card = getattr(current_detector(self.pipeline), "card", None)
        problem = class_problem(after.detect.classes, card) if card is not None else None
        if problem:
            raise CommandError(problem)

    def _require_allowed_gpio(self, keys: list[str], before: Config, after: Config) -> None:
        if not any(k == "rules" or k.startswith("rules.") for k in keys):
            return
        problems = gpio_problems(after.rules.outputs, before.rules.outputs, before.control.remote_gpio_pins)
        if problems:
            raise CommandError("; ".join(problems))

    def _notes(self, keys: list[str]) -> list[str]:
        notes = []
        origins = self.origins
        for key in keys:
            path = tuple(key.split("."))
            for origin_key, origin in origins.items():
                overlaps = origin_key[: len(path)] == path or path[: len(origin_key)] == origin_key
                if overlaps and (origin.startswith("env ") or origin.startswith("-")):
                    notes.append(f"{key}: {origin} sets it too and wins at the next start")
                    break
        if "capture.fps" in keys:
            notes.append(
                "capture.fps: analysis is capped now; the camera's own frame rate changes at the next start"
            )
        return notes

    # -- appliers -----------------------------------------------------------------------------------
    def _apply(self, keys: list[str], before: Config, after: Config, actor: str, undo: list[Undo]) -> None:
        """Make the changed keys effective, appending to `undo` how to take each step back."""
        touched = [o for o in self.owners if any(under(k, o.prefix) or under(o.prefix, k) for k in keys)]
        for owner in (o for o in touched if not o.between_frames):
            owner.reconfigure(after, actor)  # may refuse (nothing changed then)
            undo.append(partial(owner.reconfigure, before, f"{actor} (rolled back)"))
        framed = [o for o in touched if o.between_frames]
        pipeline = self.pipeline
        max_fps = pipeline.max_fps  # None: no cap had been set live (a rollback keeps it so)
        with pipeline.lock:  # between two frames
            if self._config() is not before:  # a model update swapped it meanwhile: do not undo that
                raise CommandError("the configuration changed while this change was applied; nothing changed, retry")
            undo.append(lambda: self._restore(before, framed, actor, max_fps))
            self._swap(after)
            for owner in framed:
                owner.reconfigure(after, actor)

    def _restore(self, before: Config, framed: list[Owner], actor: str, max_fps: float | None) -> None:
        with self.pipeline.lock:
            self._swap(before)
            for owner in framed:
                owner.reconfigure(before, f"{actor} (rolled back)")
            self.pipeline.limit_rate(max_fps)


def apply_detect(detector: Detector, cfg: Config) -> None:
    """The live-tunable detector settings onto a detector (also used after a model swap or rollback)."""
    detector.reconfigure(cfg.detect)
