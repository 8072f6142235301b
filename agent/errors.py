"""How a run ends other than by finishing: a start-up failure the user must fix, or a restart asked for.

Kept apart from agent.app so a stage builder can raise `AgentError` without importing the module that
imports every stage (agent.app re-exports both names for older callers).
"""

from __future__ import annotations

# `restart` command (agent.control) and agent updates: the agent stops cleanly and exits with this
# code; systemd's Restart=always starts it again (EX_TEMPFAIL, so a log reader sees it was asked for).
EXIT_RESTART = 75


class AgentError(Exception):
    """A user-facing start-up failure (bad model, unreadable video, no camera): one clear message."""
