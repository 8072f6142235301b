"""`vigil-provision broker-config`: Mosquitto keeps what it acknowledged (persistence, queue bounds sized
from the fleet, each explained), and `--kind rabbitmq` writes the same identities and permissions for a
RabbitMQ cluster with quorum queues. The RabbitMQ files are run for real in tests/test_fleet_rabbitmq.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from cryptography import x509

from provisioning.cli import main
from provisioning.rabbitmq import amqp_topic, name_hash


def run(capsys, fleet: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--fleet", str(fleet), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def fleet(tmp_path: Path, capsys) -> Path:
    folder = tmp_path / "fleet"
    assert (
        run(capsys, folder, "init-ca", "--broker", "mqtts://broker.city.example:8883", "--name", "city")[0]
        == 0
    )
    for node in ("pole-a", "pole-b", "pole.c"):
        assert run(capsys, folder, "add-node", node)[0] == 0
    assert run(capsys, folder, "add-operator", "backoffice")[0] == 0
    return folder


def conf_lines(path: Path) -> dict[str, str]:
    return {
        k: v
        for k, _, v in (line.partition(" ") for line in path.read_text().splitlines())
        if not k.startswith("#")
    }


def test_mosquitto_keeps_what_it_acknowledged_and_says_for_how_long(fleet: Path, capsys):
    code, out, err = run(capsys, fleet, "broker-config", "--nodes", "1000", "--outage", "2h")
    assert code == 0, err
    conf = fleet / "broker" / "mosquitto.conf"
    values = conf_lines(conf)
    assert values["persistence"] == "true" and values["autosave_interval"] == "60"
    assert "persistence_location" not in values  # Debian's main config has one; Mosquitto refuses a second
    # 1000 nodes × 1.5 msg/s × 7200 s × 1.25
    assert values["max_queued_messages"] == "13500000" and values["max_queued_bytes"] == "13500000000"
    text = conf.read_text()
    assert "a clean restart (systemctl restart mosquitto) keeps everything" in text
    assert "a crash or power cut loses what arrived in the last 60 s" in text
    assert "drops new messages for the absent session silently" in text
    assert "about 16.2 GB of RAM" in text  # payloads plus Mosquitto's own bookkeeping
    assert "sized for a back-office outage of 2 h" in out and "13,500,000 messages" in out

    code, _, err = run(
        capsys, fleet, "broker-config", "--persistence-dir", "/srv/mosquitto", "--outage", "30m"
    )
    assert code == 0, err
    values = conf_lines(fleet / "broker" / "mosquitto.conf")
    assert values["persistence_location"] == "/srv/mosquitto/"
    assert values["max_queued_messages"] == "10125"  # the 3 nodes of the inventory × 1.5 × 1800 s × 1.25


def test_bad_sizing_is_refused(fleet: Path, capsys):
    code, _, err = run(capsys, fleet, "broker-config", "--node-rate", "0")
    assert code == 1 and "--node-rate must be positive" in err
    code, _, err = run(capsys, fleet, "broker-config", "--kind", "rabbitmq", "--user", "mosquitto")
    assert code == 1 and "--user is for Mosquitto" in err
    code, _, err = run(capsys, fleet, "broker-config", "--kind", "rabbitmq", "--cluster-node", "not a node")
    assert code == 1 and "Erlang node name" in err


def test_rabbitmq_config_has_the_same_identities_and_permissions(fleet: Path, capsys, tmp_path: Path):
    out_dir = tmp_path / "rabbit"
    code, out, err = run(
        capsys,
        fleet,
        "broker-config",
        "--kind",
        "rabbitmq",
        "--out",
        str(out_dir),
        "--port",
        "8884",
        "--install-dir",
        "/etc/rabbitmq/vigil",
        "--cluster-node",
        "rabbit@b1",
        "--cluster-node",
        "rabbit@b2",
    )
    assert code == 0, err
    conf = (out_dir / "rabbitmq.conf").read_text().splitlines()
    for line in (
        "listeners.tcp = none",
        "mqtt.listeners.tcp = none",
        "mqtt.listeners.ssl.default = 8884",
        "mqtt.ssl_cert_login = true",
        "ssl_cert_login_from = common_name",
        "mqtt.allow_anonymous = false",
        "mqtt.durable_queue_type = quorum",
        "load_definitions = /etc/rabbitmq/vigil/definitions.json",
        "cluster_formation.classic_config.nodes.2 = rabbit@b2",
        "cluster_partition_handling = pause_minority",
    ):
        assert line in conf, line
    advanced = (out_dir / "advanced.config").read_text()
    assert "{verify, verify_peer}" in advanced and "{fail_if_no_peer_cert, true}" in advanced
    assert "{crl_check, peer}" in advanced and '{dir, "/etc/rabbitmq/vigil/crls"}' in advanced
    definitions = json.loads((out_dir / "definitions.json").read_text())
    assert {u["name"] for u in definitions["users"]} == {"pole-a", "pole-b", "pole.c", "backoffice"}
    assert all(u["password_hash"] == "" for u in definitions["users"])  # certificate login only
    topics = {t["user"]: t for t in definitions["topic_permissions"]}
    resources = {p["user"]: p for p in definitions["permissions"]}

    def allowed(pattern: str, mqtt_topic: str) -> bool:
        return re.search(pattern, amqp_topic(mqtt_topic)) is not None

    # the four rules of the Mosquitto ACL, on the routing keys RabbitMQ checks
    assert allowed(topics["pole-a"]["write"], "vigil/pole-a/events")
    assert allowed(topics["pole-a"]["write"], "vigil/pole-a/thumbs/0190d1f2-7a1b-7c3d-8e4f-0123456789ab")
    assert not allowed(topics["pole-a"]["write"], "vigil/pole-b/events")
    assert not allowed(topics["pole-a"]["write"], "vigil/pole-ab/events")
    assert allowed(topics["pole-a"]["read"], "vigil/pole-a/cmd/#")
    assert not allowed(topics["pole-a"]["read"], "vigil/pole-a/events")
    assert not allowed(topics["pole-a"]["read"], "vigil/+/cmd/#")
    assert allowed(topics["pole.c"]["write"], "vigil/pole.c/status")  # '.' in a node id becomes '/'
    assert not allowed(topics["pole.c"]["write"], "vigil/pole-c/status")
    assert allowed(topics["backoffice"]["read"], "vigil/+/events")
    assert allowed(topics["backoffice"]["write"], "vigil/pole-b/cmd/ping")
    assert not allowed(topics["backoffice"]["write"], "vigil/pole-b/events")
    # resources: only its own session queues
    assert re.search(resources["pole-a"]["configure"], "mqtt-subscription-pole-aqos1")
    assert not re.search(resources["pole-a"]["configure"], "mqtt-subscription-pole-bqos1")
    assert re.search(resources["backoffice"]["read"], "amq.topic")
    assert "on each broker's disk" in out

    ca = x509.load_pem_x509_certificate((fleet / "ca" / "ca.crt").read_bytes())
    crl_files = list((out_dir / "crls").iterdir())
    assert [p.name for p in crl_files] == [f"{name_hash(ca.subject)}.r0"]
    assert crl_files[0].read_bytes() == (fleet / "ca" / "crl.pem").read_bytes()
    openssl = shutil.which("openssl")
    if openssl:  # the name Erlang's ssl_crl_hash_dir looks for is OpenSSL's subject hash
        res = subprocess.run(
            [openssl, "x509", "-hash", "-noout", "-in", str(fleet / "ca" / "ca.crt")],
            capture_output=True,
            text=True,
            check=True,
        )
        assert res.stdout.strip() == name_hash(ca.subject)

    assert run(capsys, fleet, "revoke", "pole-b")[0] == 0  # refreshes every recorded broker output
    definitions = json.loads((out_dir / "definitions.json").read_text())
    assert "pole-b" not in {u["name"] for u in definitions["users"]}
    assert "rabbitmqctl delete_user pole-b" in (out_dir / "revoked.txt").read_text()
    crl = x509.load_pem_x509_crl(crl_files[0].read_bytes())
    assert len(list(crl)) == 1


def test_operator_roles_become_broker_permissions_and_certificates(fleet: Path, capsys, tmp_path: Path):
    from agent.control.roles import cert_role

    for name, role in (("alice", "admin"), ("carol", "operator"), ("bob", "viewer")):
        assert run(capsys, fleet, "add-operator", name, "--role", role)[0] == 0
    cert = x509.load_pem_x509_certificate((fleet / "operators" / "carol" / "carol.crt").read_bytes())
    assert cert_role(cert) == "operator"
    out_dir = tmp_path / "rabbit"
    assert run(capsys, fleet, "broker-config", "--kind", "rabbitmq", "--out", str(out_dir))[0] == 0
    assert run(capsys, fleet, "broker-config")[0] == 0
    topics = {t["user"]: t for t in json.loads((out_dir / "definitions.json").read_text())["topic_permissions"]}
    acl = (fleet / "broker" / "acl").read_text()

    def rabbit_may(user: str, command: str) -> bool:
        return re.search(topics[user]["write"], amqp_topic(f"vigil/pole-a/cmd/{command}")) is not None

    def mosquitto_may(user: str, command: str) -> bool:
        block = acl.split(f"\nuser {user}\n")[1].split("\n\n")[0]
        return f"topic write vigil/+/cmd/{command}" in block or "topic write vigil/+/cmd/#" in block

    expected = {
        "bob": {"ping": True, "status": True, "config/get": True, "config/set": False, "restart": False},
        "carol": {"ping": True, "config/set": True, "snapshot": True, "model/update": False, "restart": False},
        "alice": {"ping": True, "config/set": True, "model/update": True, "restart": True, "agent/update": True},
    }
    for user, commands in expected.items():
        for command, allowed in commands.items():
            assert rabbit_may(user, command) is allowed, (user, command)
            assert mosquitto_may(user, command) is allowed, (user, command)
    assert not rabbit_may("carol", "config/setx") and not rabbit_may("bob", "ping/x")

    # a downgrade is a new certificate, and every earlier one is revoked
    before = x509.load_pem_x509_certificate((fleet / "operators" / "alice" / "alice.crt").read_bytes())
    code, out, err = run(capsys, fleet, "add-operator", "alice", "--role", "viewer")
    assert code == 0 and "operator alice (viewer)" in out and "revoked 1 earlier certificate" in out, out + err
    crl = x509.load_pem_x509_crl((fleet / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(before.serial_number) is not None
    after = x509.load_pem_x509_certificate((fleet / "operators" / "alice" / "alice.crt").read_bytes())
    assert cert_role(after) == "viewer" and after.public_key() == before.public_key()
    acl = (fleet / "broker" / "acl").read_text()
    assert "topic write vigil/+/cmd/#" not in acl.split("\nuser alice\n")[1].split("\n\n")[0]
