"""Builds the uplink stage: the MQTT publisher, behind a scripted link when simulating one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.errors import AgentError
from agent.lifecycle import resolve_deadline
from agent.uplink.link import LinkProxy, ProfileError, ProfileRunner, load_profile
from agent.uplink.mqtt import BrokerUrl, MqttPublisher, UplinkError

if TYPE_CHECKING:
    from agent.app import Agent, Running
    from agent.config.schema import Config

log = logging.getLogger(__name__)


class UplinkStage:
    """The publisher plus, with a link profile, the proxy that plays it; started and stopped together."""

    name = "uplink"

    def __init__(
        self, publisher: MqttPublisher, proxy: LinkProxy | None = None, runner: ProfileRunner | None = None
    ) -> None:
        self.publisher = publisher
        self.proxy = proxy
        self.runner = runner

    def start(self) -> UplinkStage:
        if self.proxy is not None and self.runner is not None:
            self.runner.start()
        self.publisher.start()
        return self

    def request_stop(self) -> None:
        self.publisher.request_stop()

    def stop(self, deadline: float | None = None) -> None:
        deadline = resolve_deadline(deadline)
        self.publisher.stop(deadline)
        if self.runner is not None:
            self.runner.stop(deadline)
        if self.proxy is not None:
            self.proxy.stop(deadline)

    def status(self) -> dict[str, Any]:
        status = self.publisher.status()
        if self.runner is not None:
            status["link_profile"] = {
                "name": self.runner.profile.name,
                "state": self.runner.current.describe(),
            }
        return status


def build(agent: Agent, running: Running) -> UplinkStage | None:
    cfg = agent.config.uplink
    if not cfg.broker:
        return None
    if cfg.link_profile and not agent.options.simulate:
        # the proxy relaxes TLS hostname checks; it is a laptop tool, never a node setting
        raise AgentError("uplink.link_profile is for `agent --simulate` only")
    proxy = None
    try:
        broker = BrokerUrl.parse(cfg.broker)
        runner = None
        if cfg.link_profile:
            profile = load_profile(cfg.link_profile)
            proxy = LinkProxy((broker.host, broker.port)).start()
            host, port = proxy.address
            runner = ProfileRunner(proxy, profile)
            log.info("link profile %s between the agent and %s", profile.name, broker)
            broker = BrokerUrl(host, port, broker.tls)
        publisher = MqttPublisher.from_config(
            running.spool,
            cfg,
            agent.config.node.id,
            broker=broker,
            check_hostname=proxy is None,
            # nothing takes commands without the control plane: a kept session would hold them
            takes_commands=agent.config.control.enabled,
        )
    except (UplinkError, ProfileError) as exc:
        if proxy is not None:
            proxy.stop()
        raise AgentError(str(exc)) from None
    return UplinkStage(publisher, proxy, runner)


def disclose(config: Config) -> list[dict[str, Any]]:
    """For `agent privacy report`: the retained status message and the broker's last will."""
    if not config.uplink.broker:
        return []
    return [
        {
            "name": "status",
            "topic": f"{config.uplink.topic_prefix}/{config.node.id}/status",
            "content": "retained JSON: `online` while connected (the broker publishes `offline` when the node "
            "goes away); no images, no objects, no people",
            "fields": [
                "state",
                "node",
                "agent (version)",
                "boot (kernel boot id)",
                "listening (topics it takes commands on)",
                "camera (health flags)",
                "model",
                "model_sha256",
            ],
        }
    ]
