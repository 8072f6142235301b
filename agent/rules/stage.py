"""Wires the rules engine and its local outputs into the running agent (agent.app.STAGE_BUILDERS)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.config.rules import RulesConfig
from agent.outputs import OutputBank
from agent.privacy import open_audit
from agent.rules.engine import RuleEngine


class RulesStage:
    """Lifecycle of the engine's outputs; the engine itself runs in the analysis loop."""

    name = "rules"

    def __init__(self, engine: RuleEngine, outputs: OutputBank) -> None:
        self.engine = engine
        self.outputs = outputs

    def start(self) -> None:
        self.outputs.start()

    def stop(self) -> None:
        self.outputs.stop()

    def update(self, cfg: RulesConfig | Mapping[str, Any], *, actor: str) -> RulesConfig:
        """Live rule change (validated, atomic, audited); see RuleEngine.update."""
        return self.engine.update(cfg, actor=actor)

    def status(self) -> dict[str, Any]:
        return {"rules": {**self.engine.status(), **self.outputs.status()}}


def build(agent: Any, running: Any) -> RulesStage:
    """Always built (even without rules) so rules can be added live."""
    config = agent.config
    pipeline = running.pipeline
    outputs = OutputBank(config.rules.outputs)
    engine = RuleEngine(
        config.rules,
        emit=pipeline.emitter.emit,
        factory=pipeline.factory,
        thumbnailer=lambda: pipeline.thumbnailer if config.events.thumbnails else None,
        outputs=outputs,
        audit=open_audit(running.state_dir, config.privacy.audit, running.clock),
    )
    pipeline.track_handlers.append(engine)
    return RulesStage(engine, outputs)
