"""Rules: zones, lines and what happens when objects use them. Decide, then act:

- `RuleEngine.evaluate(FrameInput) -> list[Firing]` decides (agent.rules.engine; no side effects),
- `RuleDispatcher.dispatch(firings, frame, tracks)` acts (agent.rules.dispatch: events, outputs,
  snapshot requests, audit),
- `RulesHandler` joins both in the pipeline (agent.rules.stage).

Integration points: `RulesStage.update(rules_config, actor=...)` swaps the rule set live (the
control plane's config/set), and `RulesHandler.on_snapshot` is the hook a snapshot handler installs
to serve rules that request a snapshot. Reach the handler as `running.services.rules.handler`
(also `.engine`, the name the control plane has used).
"""

from agent.rules.dispatch import RuleDispatcher, SnapshotRequest
from agent.rules.engine import RuleEngine
from agent.rules.firing import Actions, Firing, FiringTrack, FrameInput
from agent.rules.stage import RulesHandler
from agent.rules.state import validate_rules

__all__ = [
    "Actions",
    "Firing",
    "FiringTrack",
    "FrameInput",
    "RuleDispatcher",
    "RuleEngine",
    "RulesHandler",
    "SnapshotRequest",
    "validate_rules",
]
