"""Issue 13 for the fleet tooling: re-issuing revokes the old certificate (shown with a real Mosquitto
reading the generated CRL), names are validated by full match (and Mosquitto loads the ACL they make),
the CA key can be encrypted, and CRLs are warned about before they expire."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import ConfigError, validate
from agent.control.protocol import CommandError, parse_request, salvage_id
from provisioning.ca import CA, crl_pem
from provisioning.cli import main
from tests.conftest import ROOT
from tests.test_provision_mqtt import Identity, make_fleet

PASSPHRASE_ENV = "VIGIL_CA_PASSPHRASE"  # the documented interface
PASSPHRASE = "correct horse battery staple"


def run(capsys, fleet: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--fleet", str(fleet), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.fixture
def fleet(tmp_path: Path, capsys, monkeypatch) -> Path:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    folder = tmp_path / "fleet"
    code, _, err = run(capsys, folder, "init-ca", "--broker", "mqtts://broker.city.example:8883")
    assert code == 0, err
    return folder


# -- item 8: full-match validation of every name ------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["add-node", "pole-1\nuser root"],
        ["add-operator", "pole-1\n"],
        ["add-node", "pole-1", "--modem", "ec25", "--apn", "internet\n.example"],
        ["add-node", "pole-1", "--camera", "rtsp://cam.example/live\nuser root"],
        ["broker-config", "--host", "broker.city.example\n"],
        ["broker-config", "--user", "mosquitto\n"],
        ["broker-config", "--bind", "127.0.0.1\n"],
        ["broker-config", "--install-dir", "/etc/mosquitto/vigil\nallow_anonymous true"],
    ],
    ids=["node", "operator", "apn", "camera", "host", "user", "bind", "install-dir"],
)
def test_a_trailing_newline_is_refused_and_nothing_is_written(fleet: Path, capsys, args: list[str]):
    before = files(fleet)
    code, _, err = run(capsys, fleet, *args)
    assert code == 1 and "Traceback" not in err, err
    assert files(fleet) == before


def test_sheets_prefixes_and_hand_edited_files_are_checked_too(fleet: Path, capsys, tmp_path: Path):
    sheet = tmp_path / "poles.csv"
    sheet.write_text('id,site\n"pole-1\nuser root",Market\n')
    code, _, err = run(capsys, fleet, "from-inventory", str(sheet))
    assert code == 1 and "pole-1" in err
    sheet.write_text('id,site\n"pole-1\n",Market\n')  # cells are trimmed, as for a space after a comma
    assert run(capsys, fleet, "from-inventory", str(sheet))[0] == 0
    assert sorted(p.name for p in (fleet / "nodes").iterdir()) == ["pole-1"]
    for option in (["--prefix", "vigil\n"], ["--name", "city\n"], ["--broker", "mqtts://broker.example\n"]):
        other = tmp_path / f"other{len(option[1])}"
        args = ["init-ca", "--broker", "mqtts://broker.example:8883", *option]
        code, _, err = run(capsys, other, *args)
        assert code == 1, (option, err)
        assert not (other / "ca").exists()
    settings = fleet / "fleet.toml"
    good = settings.read_text()
    settings.write_text(good.replace('topic_prefix = "vigil"', 'topic_prefix = "vigil\\n"'))
    code, _, err = run(capsys, fleet, "add-node", "pole-1")
    assert code == 1 and "topic_prefix" in err
    settings.write_text(good)
    assert run(capsys, fleet, "add-operator", "backoffice")[0] == 0
    inventory = fleet / "inventory.toml"
    inventory.write_text(inventory.read_text().replace("[operators.backoffice]", '[operators."pole-1\\n"]'))
    code, _, err = run(capsys, fleet, "broker-config")
    assert code == 1 and "malformed inventory" in err and "'pole-1\\n'" in err


def test_the_agent_refuses_trailing_newlines_in_names_and_times():
    """The agent's schema goes through pydantic's Rust regex ($ is the end of the text): pinned here."""
    bad = [
        {"node": {"id": "pole-1\n"}},
        {"uplink": {"topic_prefix": "vigil\n"}},
        {"rules": {"zones": [{"name": "gate\n", "polygon": [[0, 0], [1, 0], [1, 1]]}]}},
        {"privacy": {"masks": [{"name": "garden\n", "polygon": [[0, 0], [1, 0], [1, 1]]}]}},
    ]
    for data in bad:
        with pytest.raises(ConfigError):
            validate(data)
    window = {"days": ["mon"], "start": "08:00\n", "end": "18:00"}
    rule = {"name": "r", "type": "zone_enter", "zone": "gate", "schedule": [window]}
    zone = {"name": "gate", "polygon": [[0, 0], [1, 0], [1, 1]]}
    with pytest.raises(ConfigError):
        validate({"rules": {"zones": [zone], "rules": [rule]}})
    with pytest.raises(CommandError):
        parse_request(b'{"id": "op-1\\n"}')
    assert salvage_id(b'{"id": "op-1\\n", "x": 1}') is None


def test_mosquitto_loads_the_generated_acl(tmp_path: Path, capsys):
    """Names at the edges of what is allowed, revoked identities: the ACL and config load, and work."""
    fleet = make_fleet(tmp_path / "fleet")
    longest = "n" + "x" * 62
    for args in (["add-node", longest], ["add-operator", "ops.back_office-2"], ["add-operator", "retired"]):
        fleet.provision(*args)
    fleet.provision("revoke", "retired")
    fleet.provision("revoke", "pole-b")
    assert main(["--fleet", str(fleet.root), "add-operator", "pole-1\n"]) == 1
    assert "pole-1" in capsys.readouterr().err
    broker = fleet.broker().start()  # raises if Mosquitto exits: it refuses an ACL it cannot parse
    try:
        operator = fleet.client(
            Identity(
                fleet.root / "operators/ops.back_office-2/ops.back_office-2.crt",
                fleet.root / "operators/ops.back_office-2/ops.back_office-2.key",
            )
        ).connect_ok()
        node = fleet.client(fleet.node(longest)).connect_ok()
        try:
            operator.subscribe("vigil/#")
            node.publish(f"vigil/{longest}/events", b"from the longest name")
            assert operator.receive_until(b"from the longest name")
        finally:
            node.close()
            operator.close()
        assert broker.proc is not None and broker.proc.poll() is None
    finally:
        broker.stop()
    log = (fleet.root / "mosquitto.log").read_text()
    assert "Error" not in log, log


# -- item 1: re-issuing revokes every earlier certificate ---------------------------------------------
def test_reissue_revokes_the_stolen_certificate_at_a_real_broker(tmp_path: Path):
    fleet = make_fleet(tmp_path / "fleet")
    stolen_dir = tmp_path / "stolen"
    shutil.copytree(fleet.root / "nodes" / "pole-c", stolen_dir)
    stolen = Identity(stolen_dir / "node.crt", stolen_dir / "node.key")
    broker = fleet.broker().start()
    clients = []
    try:
        clients.append(fleet.client(stolen).connect_ok())  # the thief's copy works until the re-issue
        clients[-1].close()
        fleet.provision(
            "add-node", "pole-c", "--site", "pole-c site", "--lat", "52.37", "--lon", "4.89", "--reissue"
        )
        broker.stop()  # Mosquitto reads the CRL when it starts
        broker.start()
        replacement = fleet.client(fleet.node("pole-c")).connect_ok()
        clients.append(replacement)
        replacement.subscribe("vigil/pole-c/cmd/#")
        thief = fleet.client(stolen).start()
        clients.append(thief)
        assert thief.outcome() == "refused"
        # the refused thief did not push the replacement off the broker (same client id = CN)
        operator = fleet.client(fleet.operator()).connect_ok()
        clients.append(operator)
        operator.publish("vigil/pole-c/cmd/ping", b"still the replacement")
        assert replacement.receive_until(b"still the replacement")
        assert not replacement.closed.is_set()
    finally:
        for client in clients:
            client.close()
        broker.stop()


def test_list_shows_every_serial_and_its_state(fleet: Path, capsys):
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0
    bundle = fleet / "nodes" / "pole-a"
    first = serial_of(bundle / "node.crt")
    settings = fleet / "fleet.toml"
    settings.write_text(settings.read_text().replace("renew_before_days = 30", "renew_before_days = 1000"))
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0  # renewal: same key, nothing revoked
    renewed = serial_of(bundle / "node.crt")
    settings.write_text(settings.read_text().replace("renew_before_days = 1000", "renew_before_days = 30"))
    code, out, _ = run(capsys, fleet, "add-node", "pole-a", "--reissue")
    assert code == 0 and "revoked 2 earlier certificate(s)" in out, out
    current = serial_of(bundle / "node.crt")
    rows = json.loads(run(capsys, fleet, "list", "--json")[1])
    node = next(r for r in rows if r["kind"] == "node" and r["id"] == "pole-a")
    states = {int(s["serial"], 16): s["state"] for s in node["serials"]}
    assert states == {first: "revoked", renewed: "revoked", current: "current"}
    crl = x509.load_pem_x509_crl((fleet / "ca" / "crl.pem").read_bytes())
    assert {e.serial_number for e in crl} == {first, renewed}
    code, out, _ = run(capsys, fleet, "list")
    earlier = [line for line in out.splitlines() if "earlier" in line]
    assert len(earlier) == 2 and all("revoked" in line for line in earlier)


def test_a_lost_key_is_not_replaced_silently(fleet: Path, capsys):
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0
    assert run(capsys, fleet, "add-operator", "backoffice")[0] == 0
    (fleet / "nodes" / "pole-a" / "node.key").unlink()
    before = files(fleet)
    code, _, err = run(capsys, fleet, "add-node", "pole-a")
    assert code == 1 and "--reissue" in err and "still valid" in err
    assert files(fleet) == before
    old_operator = serial_of(fleet / "operators" / "backoffice" / "backoffice.crt")
    code, out, _ = run(capsys, fleet, "add-operator", "backoffice", "--reissue")
    assert code == 0 and "revoked 1 earlier" in out
    crl = x509.load_pem_x509_crl((fleet / "ca" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old_operator) is not None


# -- item 10: an encrypted CA key ---------------------------------------------------------------------
def test_the_ca_key_can_be_encrypted_and_is_asked_for_only_to_sign(tmp_path: Path, capsys, monkeypatch):
    folder = tmp_path / "fleet"
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    code, _, err = run(capsys, folder, "init-ca", "--broker", "mqtts://b.example:8883", "--encrypt")
    assert code == 1 and PASSPHRASE_ENV in err and not folder.exists()  # no terminal, no variable
    monkeypatch.setenv(PASSPHRASE_ENV, "too short")
    assert run(capsys, folder, "init-ca", "--broker", "mqtts://b.example:8883", "--encrypt")[0] == 1
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert run(capsys, folder, "init-ca", "--broker", "mqtts://b.example:8883", "--encrypt")[0] == 0
    pem = (folder / "ca" / "ca.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    assert serialization.load_pem_private_key(pem, password=PASSPHRASE.encode()) is not None

    monkeypatch.delenv(PASSPHRASE_ENV)
    before = files(folder)
    code, _, err = run(capsys, folder, "add-node", "pole-a")
    assert code == 1 and PASSPHRASE_ENV in err and files(folder) == before
    monkeypatch.setenv(PASSPHRASE_ENV, "not the passphrase")
    code, _, err = run(capsys, folder, "add-node", "pole-a")
    assert code == 1 and "wrong passphrase" in err and files(folder) == before
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE)
    assert run(capsys, folder, "add-node", "pole-a")[0] == 0
    monkeypatch.delenv(PASSPHRASE_ENV)
    assert run(capsys, folder, "add-node", "pole-a")[0] == 0  # nothing to sign: no passphrase needed
    assert run(capsys, folder, "list")[0] == 0
    with pytest.raises(SystemExit) as usage:  # there is no way to pass it on the command line
        main(["--fleet", str(folder), "init-ca", "--broker", "mqtts://b.example", "--passphrase", PASSPHRASE])
    assert usage.value.code == 2
    capsys.readouterr()


def _read_until(fd: int, marker: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"no {marker!r} in {seen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_the_passphrase_is_asked_on_the_terminal(tmp_path: Path):
    """The prompt path, through a real pseudo-terminal (getpass reads the controlling terminal)."""
    folder = tmp_path / "fleet"
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    argv = [
        sys.executable,
        "-m",
        "provisioning",
        "--fleet",
        str(folder),
        "init-ca",
        "--broker",
        "mqtts://b.example:8883",
        "--encrypt",
    ]
    pid, master = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, argv, env)
    try:
        _read_until(master, b"New CA key passphrase:")
        os.write(master, PASSPHRASE.encode() + b"\n")
        _read_until(master, b"Repeat the passphrase:")
        os.write(master, PASSPHRASE.encode() + b"\n")
        output = _read_until(master, b"fleet CA created")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert PASSPHRASE.encode() not in output  # not echoed
    pem = (folder / "ca" / "ca.key").read_bytes()
    assert serialization.load_pem_private_key(pem, password=PASSPHRASE.encode()) is not None


# -- item 10: warn before a CRL expires ---------------------------------------------------------------
def test_list_and_health_warn_before_a_broker_crl_expires(fleet: Path, capsys):
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0
    out_dir = fleet / "broker"
    assert run(capsys, fleet, "broker-config", "--out", str(out_dir))[0] == 0
    code, out, _ = run(capsys, fleet, "health")
    assert code == 0 and "0 warning(s)" in out
    # the broker still reads a CRL signed long ago, now five days from its next update
    ca = CA.load(fleet / "ca" / "ca.crt", fleet / "ca" / "ca.key")
    (out_dir / "crl.pem").write_bytes(crl_pem(ca.crl([], 7, 5)))
    code, out, _ = run(capsys, fleet, "list")
    assert code == 0
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert (
        len(warning) == 1 and str(out_dir / "crl.pem") in warning[0] and "refuses every client" in warning[0]
    )
    rows = json.loads(run(capsys, fleet, "list", "--json")[1])
    broker_crl = next(r for r in rows if r["kind"] == "broker-crl")
    assert broker_crl["warning"] and "expires in" in broker_crl["state"]
    code, out, _ = run(capsys, fleet, "health")
    assert code == 1 and "refuses every client" in out
    # past its next update: Mosquitto would refuse everyone, and list says so
    (out_dir / "crl.pem").write_bytes(crl_pem(ca.crl([], 8, 0)))
    rows = json.loads(run(capsys, fleet, "list", "--json")[1])
    assert next(r for r in rows if r["kind"] == "broker-crl")["state"] == "EXPIRED"
    # broker-config re-signs it; then all is well again
    assert run(capsys, fleet, "broker-config", "--out", str(out_dir))[0] == 0
    code, out, _ = run(capsys, fleet, "health")
    assert code == 0, out
