"""The uplink's MQTT session against a real Mosquitto: every PUBACK reaches the publisher as the packet
id it acknowledges, accepted ones on the short path (see session._Client), refusals with their reason."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest

from agent.config.schema import UplinkConfig
from agent.uplink.mqtt.session import Session
from agent.uplink.mqtt.settings import BrokerUrl, PublisherSettings
from tests.brokers import Mosquitto

ACL = "topic readwrite vigil/node-1/events\ntopic readwrite vigil/node-1/status\n"


@pytest.fixture
def acl_broker(tmp_path):
    (tmp_path / "acl").write_text(ACL)
    broker = Mosquitto(tmp_path / "broker", extra=f"acl_file {tmp_path / 'acl'}\n").start()
    yield broker
    broker.stop()


def open_session(url: str, protocol: str) -> Session:
    config = UplinkConfig(broker=url, protocol=protocol, inflight=5)
    session = Session(PublisherSettings.from_config(config, "node-1", broker=BrokerUrl.parse(url)), will=b"{}")
    session.open(threading.Event())
    return session


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_every_puback_settles_its_own_packet_id_and_refusals_keep_their_reason(acl_broker, protocol, monkeypatch):
    full_decodes = []  # PUBACKs that went through paho's own decoding
    original = paho.Client._handle_pubackcomp

    def counted(client, cmd):
        full_decodes.append(cmd)
        return original(client, cmd)

    monkeypatch.setattr(paho.Client, "_handle_pubackcomp", counted)
    session = open_session(acl_broker.url, protocol)
    try:
        accepted = [session.publish("vigil/node-1/events", b'{"n":%d}' % n, retain=False) for n in range(40)]
        denied = session.publish("vigil/node-1/thumbs/x", b"jpeg", retain=False)
        acked: list[int] = []
        refused = []
        deadline = time.monotonic() + 30
        while len(acked) + len(refused) < 41 and time.monotonic() < deadline:
            session._changed.wait(0.2)  # set by paho's thread with every batch of PUBACKs
            session._changed.clear()
            events = session.take_events()
            acked += events.acked
            refused += events.refused
    finally:
        session.close()
    if protocol == "5":  # MQTT 5: the ACL's refusal is a PUBACK with a reason code
        assert sorted(acked) == sorted(accepted)
        assert [(a.mid, a.code) for a in refused] == [(denied, 0x87)]
        assert full_decodes == ["PUBACK"]  # only the refusal needed paho's full decoding
    else:  # MQTT 3.1.1 has no reason codes: Mosquitto acknowledges the denied publish as delivered
        assert sorted(acked) == sorted([*accepted, denied]) and not refused
        assert full_decodes == []
