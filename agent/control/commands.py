"""The commands: their arguments (strict pydantic models: unknown or mistyped fields are refused), the
role each needs, and what each one does. The dispatcher (agent.control.stage) admits the request
(agent.control.gate: signature, role, rate, freshness, replay), validates, runs and replies.

To add a command, add an entry to COMMANDS: ``"name": Command(Args, run, "summary", role="operator")``.
`role` is the least role that may run it (agent.control.roles: viewer, operator, admin); a command
that does not declare one is admin-only. The gate enforces it before `run` is called, and
vigil-provision generates the broker ACL from the same table, so a command needs no checks of its
own. A command returns (message, data) for an immediate "ok", raises CommandError for an "error",
or returns None when it replies later by itself (model/update, restart).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import agent as agent_pkg
from agent.control.args import (
    AgentUpdateArgs,
    ConfigGetArgs,
    ConfigSetArgs,
    Context,
    ModelUpdateArgs,
    NoArgs,
    RestartArgs,
    Result,
    SnapshotArgs,
)
from agent.control.protocol import CommandError, Strict
from agent.control.roles import Role, allows

if TYPE_CHECKING:
    from agent.app import Running
    from agent.control.live import LiveConfig
    from agent.control.model_update import ModelUpdater
    from agent.control.snapshot import Snapshotter
    from agent.health.stage import HealthStage
    from agent.services import Host
    from agent.update.updater import AgentUpdater

log = logging.getLogger(__name__)

class Controller(Protocol):
    """What the commands use of the control stage (agent.control.stage.ControlStage): named here, so
    the command table does not import the stage that imports it."""

    host: Host
    running: Running
    health: HealthStage
    live: LiveConfig
    snapshots: Snapshotter
    models: ModelUpdater
    releases: AgentUpdater

    def request_restart(self, ctx: Context, reason: str) -> None: ...


@dataclass(frozen=True)
class Command:
    args: type[Strict]
    run: Callable[[Controller, Context, Any], Result]
    summary: str
    role: Role = "admin"  # the least role that may run it; undeclared means admin only


def ping(stage: Controller, ctx: Context, args: NoArgs) -> Result:
    uptime = time.monotonic() - stage.health.collector.started_mono
    return "pong", {
        "agent": agent_pkg.__version__,
        "node": stage.host.config.node.id,
        "uptime_s": round(uptime, 1),
    }


def status(stage: Controller, ctx: Context, args: NoArgs) -> Result:
    return "status", stage.health.collector.full()


def snapshot(stage: Controller, ctx: Context, args: SnapshotArgs) -> Result:
    data = stage.snapshots.take(actor=ctx.actor, reason=args.reason, request_id=ctx.request_id)
    return "snapshot sent as a `snapshot` event; its image follows on thumbs/{event id}", data


def config_get(stage: Controller, ctx: Context, args: ConfigGetArgs) -> Result:
    return "config", stage.live.get(args.keys)


def config_set(stage: Controller, ctx: Context, args: ConfigSetArgs) -> Result:
    data = stage.live.set(args.values, ctx.actor)
    if not data["changed"]:
        return "no change", data
    where = data["persisted_to"]
    return f"applied live and saved to {where}: {', '.join(data['changed'])}", data


def model_update(stage: Controller, ctx: Context, args: ModelUpdateArgs) -> Result:
    stage.models.start(args, ctx.actor, ctx.reply)
    return None


def agent_update(stage: Controller, ctx: Context, args: AgentUpdateArgs) -> Result:
    if not stage.host.config.update.enabled:
        raise CommandError("agent updates are off on this node (update.enabled = false)")
    stage.releases.start(args, ctx.actor, ctx.reply, ctx.progress)
    return None


def modem_reset(stage: Controller, ctx: Context, args: NoArgs) -> Result:
    modem = stage.running.services.modem
    supervisor = getattr(modem, "supervisor", None)
    if modem is None or supervisor is None:
        raise CommandError("no modem is managed on this node (modem.port is not set); nothing to reset")
    stage.health.privacy.audit.record("modem.reset", ctx.actor, {})
    how = reset_modem(supervisor)
    return f"modem reset: {how}; the supervisor re-registers (watch `status`)", {"modem": supervisor.status()}


def reset_modem(supervisor: Any) -> str:
    """Queue a full reset on the supervisor's own thread (counted and noted like a recovery step)."""
    try:
        supervisor.request_reset()
    except RuntimeError as exc:
        raise CommandError(str(exc)) from None
    return "reset requested (full modem reboot)"


def restart(stage: Controller, ctx: Context, args: RestartArgs) -> Result:
    stage.health.privacy.audit.record("agent.restart", ctx.actor, {"reason": args.reason})
    stage.request_restart(ctx, args.reason)
    return None


COMMANDS: dict[str, Command] = {
    "ping": Command(NoArgs, ping, "answers pong", role="viewer"),
    "status": Command(NoArgs, status, "the node's full state", role="viewer"),
    "config/get": Command(ConfigGetArgs, config_get, "the effective configuration", role="viewer"),
    "snapshot": Command(SnapshotArgs, snapshot, "one redacted, audited frame", role="operator"),
    "config/set": Command(ConfigSetArgs, config_set, "change tunable settings live, persisted", role="operator"),
    "model/update": Command(ModelUpdateArgs, model_update, "fetch, verify and swap the detector model", role="admin"),
    "agent/update": Command(
        AgentUpdateArgs, agent_update, "install a signed release, restart into it on probation", role="admin"
    ),
    "modem/reset": Command(NoArgs, modem_reset, "reboot the LTE modem", role="admin"),
    "restart": Command(RestartArgs, restart, "exit cleanly for systemd to restart the agent", role="admin"),
}


def commands_for(role: str) -> list[str]:
    """The commands a role may send (the broker ACL lists them for roles below admin)."""
    return [name for name, command in COMMANDS.items() if allows(role, command.role)]
