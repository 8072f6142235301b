"""Plain mqtt:// that exposes a node (issue 13, item 10): a warning at start and in check-config,
refused with node.profile = "production", which every provisioned bundle has. The start-up warning
is shown with a real agent talking to a real Mosquitto over this machine's network address."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agent.config import load_config
from provisioning.cli import main as provision
from tests.brokers import Mosquitto, free_port
from tests.conftest import run_agent

REMOTE = "mqtt://broker.city.example:1883"
PASSWORD = 'username = "pole-17"\npassword = "pw-in-clear"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def check(path: Path) -> tuple[int, str, str]:
    res = run_agent("check-config", str(path), "--ignore-env", timeout=60)
    return res.returncode, res.stdout, res.stderr


def test_check_config_warns_about_plain_mqtt_that_exposes_the_node(tmp_path: Path):
    code, out, err = check(write(tmp_path, f'[uplink]\nbroker = "{REMOTE}"\n{PASSWORD}'))
    assert code == 0 and "OK" in out
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 2, err
    assert "uplink.username/password" in warnings[0] and "unencrypted" in warnings[0]
    assert "control.enabled" in warnings[1] and "commands" in warnings[1]
    # what is fine: TLS, a broker on this machine, a plain broker that neither authenticates nor commands
    for text in (
        f'[uplink]\nbroker = "mqtts://broker.city.example:8883"\n{PASSWORD}',
        f'[uplink]\nbroker = "mqtt://127.0.0.1:1883"\n{PASSWORD}',
        f'[uplink]\nbroker = "{REMOTE}"\n[control]\nenabled = false\n',
    ):
        code, _, err = check(write(tmp_path, text))
        assert code == 0 and "warning" not in err, (text, err)


def test_production_refuses_it(tmp_path: Path):
    production = '[node]\nprofile = "production"\n'
    code, _, err = check(write(tmp_path, f'{production}[uplink]\nbroker = "{REMOTE}"\n{PASSWORD}'))
    assert code == 2 and "node.profile = production refuses" in err and "uplink.broker" in err
    assert "pw-in-clear" not in err
    code, _, err = check(write(tmp_path, f'{production}[uplink]\nbroker = "{REMOTE}"\n'))
    assert code == 2 and "control.enabled" in err
    code, _, err = check(
        write(tmp_path, f'{production}[uplink]\nbroker = "mqtts://b.example:8883"\n{PASSWORD}')
    )
    assert code == 0, err
    config = write(tmp_path, f'{production}[uplink]\nbroker = "{REMOTE}"\n')
    run = run_agent("--config", str(config), "--max-frames", "5", "--http", "off", timeout=60)
    assert run.returncode == 2 and "node.profile = production refuses" in run.stderr


def test_provisioned_bundles_are_production(tmp_path: Path):
    fleet = tmp_path / "fleet"
    assert provision(["--fleet", str(fleet), "init-ca", "--broker", "mqtts://broker.city.example:8883"]) == 0
    assert provision(["--fleet", str(fleet), "add-node", "pole-17"]) == 0
    config = load_config(fleet / "nodes" / "pole-17" / "config.toml", environ={}).config
    assert config.node.profile == "production"


def lan_address() -> str:
    """This machine's address on its network (no packet is sent: UDP connect only picks a route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("no network interface besides loopback")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no network interface besides loopback")
    return address


def test_the_agent_warns_at_start(tmp_path: Path):
    address = lan_address()
    port = free_port()
    broker = Mosquitto(tmp_path / "broker", extra=f"listener {port} {address}\n").start()
    try:
        config = write(tmp_path, f'[uplink]\nbroker = "mqtt://{address}:{port}"\n{PASSWORD}')
        res = run_agent(
            "--config",
            str(config),
            "--source",
            "synthetic:2",
            "--no-realtime",
            "--max-frames",
            "40",
            "--state-dir",
            str(tmp_path / "state"),
            "--http",
            "off",
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        warnings = [
            line for line in res.stderr.splitlines() if "WARNING" in line and "is plain mqtt://" in line
        ]
        assert len(warnings) == 2, res.stderr[-2000:]
        assert f"uplink: connected to mqtt://{address}:{port}" in res.stderr  # a real broker, really used
    finally:
        broker.stop()


def test_production_refuses_unsigned_commands_that_change_the_node(tmp_path: Path):
    """Signed commands (item 9): a production node may accept unsigned requests as a viewer at most."""
    production = '[node]\nprofile = "production"\n[uplink]\nbroker = "mqtts://b.example:8883"\n'
    code, _, err = check(write(tmp_path, f'{production}[control]\nunsigned_role = "admin"\n'))
    assert code == 2 and "control.unsigned_role" in err
    assert check(write(tmp_path, f'{production}[control]\nunsigned_role = "viewer"\n'))[0] == 0
    code, _, err = check(write(tmp_path, '[control]\nunsigned_role = "operator"\n'))
    assert code == 0 and "control.unsigned_role" in err  # development: a warning
