"""The MQTT side of the uplink: publisher.py (the stage and its loop), session.py (one connection),
window.py (what is in flight), router.py (commands in), settings.py (what it is told)."""

from agent.uplink.mqtt.publisher import PERMANENT_REFUSALS, MqttPublisher
from agent.uplink.mqtt.router import MessageHandler
from agent.uplink.mqtt.settings import BrokerUrl, PublisherSettings, UplinkError

__all__ = [
    "PERMANENT_REFUSALS",
    "BrokerUrl",
    "MessageHandler",
    "MqttPublisher",
    "PublisherSettings",
    "UplinkError",
]
