"""Rules: zones, lines and what happens when objects use them (agent.rules.engine).

Integration points: `RuleEngine.update(rules_config, actor=...)` swaps the rule set live (the
control plane's config/set), and `RuleEngine.on_snapshot` is the hook a snapshot handler installs
to serve rules that request a snapshot. Reach the engine as `running.extras["rules"].engine`.
"""

from agent.rules.engine import RuleEngine, SnapshotRequest, validate_rules

__all__ = ["RuleEngine", "SnapshotRequest", "validate_rules"]
