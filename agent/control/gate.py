"""The single gate every command passes before it runs (ControlStage.handle calls `admit`).

Order matters: the sender is identified first (a bad signature costs nothing but the check), then
the role is checked and the rate charged (so neither unsigned requests on a production node nor a
flood from one operator can fill the replay memory), and only then is the request's time checked
and its id and nonce remembered. A command's required role comes from its declaration
(`Command.role` in agent.control.commands); nothing else in a command needs to check who asks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.control.auth import CRL_NAME, Authenticator, Caller, TrustStore
from agent.control.protocol import request_time
from agent.control.replay import ReplayGuard
from agent.control.roles import Role

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.clock import Clock
    from agent.config.schema import Config
    from agent.control.protocol import Envelope
    from agent.control.replay import MetaStore

LEGACY_IDS = "request-ids.json"  # the id memory of agents before the replay guard


class CommandGate:
    def __init__(
        self,
        config: Config,
        clock: Clock,
        store: MetaStore,
        uptime: Callable[[], float],
        folder: Path,
    ) -> None:
        cfg = config.control
        self.clock = clock
        ca_file = cfg.ca_file or config.uplink.tls.ca_file
        self.trust = TrustStore(ca_file.expanduser() if ca_file else None, folder / CRL_NAME)
        self.auth = Authenticator(config, self.trust, config.node.id)
        self.replay = ReplayGuard(
            store, uptime, max_age_s=cfg.max_age_s, capacity=cfg.remember_ids, legacy_file=folder / LEGACY_IDS
        )
        self.refused = {"signature": 0, "role": 0, "rate": 0, "replay": 0}

    def admit(self, envelope: Envelope, command: str, role: Role) -> Caller:
        """The caller, when the request may run; CommandError (an AuthError for who-may-do-what) if not."""
        trusted = self.clock.trusted_now()
        stage = "signature"
        try:
            caller = self.auth.identify(envelope, command, self.replay.reference(trusted))
            stage = "role"
            self.auth.check_role(caller, command, role)
            stage = "rate"
            self.auth.check_rate(caller)
            stage = "replay"
            nonce = envelope.auth.nonce if envelope.auth is not None else None
            self.replay.admit(
                request_id=envelope.id, nonce=nonce, ts=request_time(envelope.ts), signed=caller.verified,
                trusted_now=trusted,
            )
        except Exception:  # CommandError: stale, replayed, not allowed; counted by where it stopped
            self.refused[stage] += 1
            raise
        return caller

    def status(self) -> dict[str, object]:
        return {
            "refused": dict(self.refused),
            "remembered": len(self.replay),
            "crl_number": self.trust.crl_number,
        }
