"""Live configuration: `config/get` and `config/set` for the runtime-tunable subset.

`config/set` takes dotted keys (`{"values": {"detect.score_threshold": 0.5, "rules": {...}}}`),
validates the whole resulting configuration with the same pydantic schema as the file, applies it
without a restart, persists it (agent.control.persist) and rolls everything back if any step fails,
so a refused change leaves the node exactly as it was.

Applying means: the config sections are updated in place (the pipeline, motion gate, uplink and
telemetry hold references to them, so they see the change at their next frame or loop), and the
stages that keep their own copies are told through their public APIs: the detector's thresholds
and classes, issue 7's `RuleEngine.update` and `PrivacyStage.set_masks` (both audited there) and
`TamperStage.update`, the publisher's byte budget, and the pipeline's analysis rate cap.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from agent.config.loader import ConfigError, redact_secrets, validate
from agent.config.schema import Config
from agent.control.persist import ConfigStore, set_path
from agent.control.protocol import CommandError
from agent.control.tunable import NOT_LIVE, TUNABLE, gpio_problems, is_tunable
from agent.detect.detector import class_problem

if TYPE_CHECKING:
    from agent.app import Agent, Running
    from agent.privacy import AuditLog

log = logging.getLogger(__name__)

MAX_KEYS = 64

Undo = Callable[[], None]


def get_path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def _section(config: BaseModel, dotted: str) -> tuple[BaseModel, str]:
    """The config object that owns `dotted`, and the field name in it."""
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        node = getattr(node, part)
    return node, parts[-1]


def _assign(config: Config, dotted: str, source: Config) -> None:
    """Copy the value at `dotted` from `source` into `config`, in place (field by field for tables,
    so every holder of the section object sees it)."""
    owner, name = _section(config, dotted)
    new_value = getattr(_section(source, dotted)[0], name)
    old_value = getattr(owner, name)
    if isinstance(old_value, BaseModel) and isinstance(new_value, BaseModel):
        for field in type(old_value).model_fields:
            object.__setattr__(old_value, field, getattr(new_value, field))
    else:
        object.__setattr__(owner, name, new_value)


class LiveConfig:
    def __init__(
        self, agent: Agent, running: Running, store: ConfigStore, audit: Callable[[], AuditLog]
    ) -> None:
        self.agent = agent
        self.running = running
        self.store = store
        self._audit = audit

    # -- config/get ---------------------------------------------------------------------------------
    def get(self, keys: list[str] | None) -> dict[str, Any]:
        data = redact_secrets(self.agent.config.model_dump(mode="json"))
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
        before = self.agent.config
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
        snapshot = before.model_copy(deep=True)
        undo: list[Undo] = []
        try:
            self._apply(changed, before, after, snapshot, actor, undo)
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
        details = {"keys": changed, "persisted_to": str(persisted)}
        small = {k: get_path(new_dump, k) for k in changed if len(json.dumps(get_path(new_dump, k))) <= 200}
        if small:
            details["values"] = small
        self._audit().record("config.change", actor, details)
        log.info("config/set by %s: %s", actor, ", ".join(changed))
        return {"changed": changed, "persisted_to": str(persisted), "notes": self._notes(changed)}

    def _require_stages(self, keys: list[str]) -> None:
        extras = self.running.extras
        for key, stage in (("rules", "rules"), ("privacy.masks", "privacy"), ("tamper", "tamper")):
            if any(k == key or k.startswith(key + ".") for k in keys) and stage not in extras:
                raise CommandError(f"{key} cannot change live: the {stage} stage is not running on this node")

    def _require_known_classes(self, keys: list[str], after: Config) -> None:
        """Classes the running model cannot output are a typo or the wrong model: refuse them rather than
        let the node silently stop reporting what the operator asked for."""
        if "detect.classes" not in keys or not after.detect.classes:
            return
        detector = self.running.pipeline.detector
        card = getattr(getattr(detector, "inner", detector), "card", None)
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
        origins = self.agent.options.config_origins
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
    def _apply(
        self, keys: list[str], before: Config, after: Config, snapshot: Config, actor: str, undo: list[Undo]
    ) -> None:
        """Make the changed keys effective, appending to `undo` how to take each step back."""
        extras = self.running.extras

        def touches(prefix: str) -> bool:
            return any(k == prefix or k.startswith(prefix + ".") for k in keys)

        if touches("rules"):
            rules = extras["rules"]
            rules.update(after.rules, actor=actor)
            undo.append(lambda: rules.update(snapshot.rules, actor=f"{actor} (rolled back)"))
        if touches("privacy.masks"):
            privacy = extras["privacy"]
            privacy.set_masks(after.privacy.masks, actor=actor)
            undo.append(lambda: privacy.set_masks(snapshot.privacy.masks, actor=f"{actor} (rolled back)"))
        if touches("tamper"):
            tamper = extras["tamper"]
            tamper.update(after.tamper)
            undo.append(lambda: tamper.update(snapshot.tamper))
        pipeline = self.running.pipeline
        max_fps = pipeline.max_fps
        with pipeline.lock:  # between two frames
            undo.append(lambda: self._restore(keys, snapshot, max_fps))
            for key in keys:
                _assign(before, key, after)
                self._effects(key)

    def _restore(self, keys: list[str], snapshot: Config, max_fps: float | None) -> None:
        with self.running.pipeline.lock:
            for key in keys:
                _assign(self.agent.config, key, snapshot)
                self._effects(key)
            self.running.pipeline.max_fps = max_fps  # None: no cap had been set live

    def _effects(self, key: str) -> None:
        """Push the (already assigned) config values into the objects that copy them."""
        cfg = self.agent.config
        pipeline = self.running.pipeline
        if key.startswith("detect."):
            apply_detect(getattr(pipeline.detector, "inner", pipeline.detector), cfg)
        elif key.startswith("motion"):
            pipeline.gate.cfg = cfg.motion
        elif key == "capture.fps":
            pipeline.max_fps = cfg.capture.fps
        elif key.startswith("uplink."):
            publisher = getattr(self.running.extras.get("uplink"), "publisher", None)
            if publisher is not None:
                publisher.reconfigure(cfg.uplink)


def apply_detect(detector: Any, cfg: Config) -> None:
    """The live-tunable detector settings onto a detector (also used after a model swap or rollback)."""
    if hasattr(detector, "score_threshold"):
        detector.score_threshold = cfg.detect.score_threshold
        detector.nms_iou = cfg.detect.nms_iou
        detector.min_box_area = cfg.detect.min_box_area
    if hasattr(detector, "set_classes"):
        detector.set_classes(cfg.detect.classes)
