"""The optional stages that are running, by type: how one stage finds another.

`Agent` builds the optional stages (agent.app.STAGE_BUILDERS) in order and files each here under its
`name`; a builder that needs an earlier stage reads the typed field (`running.services.health`) and
hands the stage it builds only the narrow thing it uses (a publisher, an audit log). Fields are
None when the stage is not configured on this node; the field order is the start order, which is
also the order of the stages in status reports.

What a stage may ask of the agent itself is just as narrow: `ConfigHost` (read the running
configuration, swap it whole) and `Host` (that, and a clean restart). `agent.app.Agent` is the one
implementation; no stage holds the `Agent`.

Only names in annotations come from the stage modules (under TYPE_CHECKING): they import this
module's users, never the other way round at run time (tests/test_import_graph.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.config.schema import Config
    from agent.control.stage import ControlStage
    from agent.detect.thermal import ThermalGovernor
    from agent.health.stage import HealthStage
    from agent.modem.stage import ModemStage
    from agent.privacy.stage import PrivacyStage
    from agent.rules.stage import RulesStage
    from agent.tamper import TamperStage
    from agent.update.stage import UpdateStage
    from agent.uplink.mqtt import MqttPublisher
    from agent.uplink.stage import UplinkStage
    from agent.web.stage import WebStage


class ConfigHost(Protocol):
    """The running configuration, for stages that read it live or change it (control, model updates)."""

    @property
    def config(self) -> Config:
        """The configuration in effect now: frozen, replaced whole by `use_config`, never edited."""
        ...

    def use_config(self, config: Config) -> None:
        """Make `config` the running configuration (one assignment: a reader sees old or new whole)."""
        ...


class Host(ConfigHost, Protocol):
    """`ConfigHost`, and the one way a stage ends the run: a clean stop with EXIT_RESTART."""

    def restart(self) -> None:
        """Stop every stage within the shutdown budget and exit with EXIT_RESTART (systemd starts the
        agent again; after an agent update, from the new release)."""
        ...


@dataclass
class Services:
    """One optional field per optional stage, in start order."""

    privacy: PrivacyStage | None = None
    rules: RulesStage | None = None
    tamper: TamperStage | None = None
    modem: ModemStage | None = None
    uplink: UplinkStage | None = None
    health: HealthStage | None = None
    thermal: ThermalGovernor | None = None
    control: ControlStage | None = None
    update: UpdateStage | None = None
    web: WebStage | None = None

    def add(self, stage: Any) -> None:
        """File a started stage under its `name`; a stage without a field here is a programming error."""
        name = getattr(stage, "name", None)
        if name not in self.names():
            raise ValueError(f"{type(stage).__name__}: no service named {name!r} (add a field to Services)")
        if getattr(self, name) is not None:
            raise ValueError(f"service {name!r} is already running")
        setattr(self, name, stage)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def get(self, name: str) -> Any:
        """The stage called `name`; KeyError when there is no such service or it is not running."""
        stage = getattr(self, name, None) if name in self.names() else None
        if stage is None:
            raise KeyError(name)
        return stage

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names() and getattr(self, name) is not None

    def items(self) -> Iterator[tuple[str, Any]]:
        """The running stages as (name, stage), in start order (status reports list them so)."""
        for name in self.names():
            stage = getattr(self, name)
            if stage is not None:
                yield name, stage

    @property
    def publisher(self) -> MqttPublisher | None:
        """The MQTT publisher, when the node has a broker (the uplink stage runs)."""
        return self.uplink.publisher if self.uplink is not None else None
