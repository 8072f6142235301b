"""vigil-provision without a broker: CA, node bundles, idempotency, bad input, operators, revocation."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography", reason="vigil-provision needs the provision extra (cryptography)")

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.config import load_config
from provisioning.cli import main
from tests.conftest import ROOT

INVENTORY = """\
id,site,lat,lon,camera,modem,apn
# three poles on Market Street
pole-a,Market St / 5th,52.37403,4.88969,camera-module-3,ec25,internet.example
pole-b,Market St / 6th,52.37500,4.89000,usb,sim7600,
pole-c,Harbour gate,,,hq-camera,none,
"""


def run(capsys, fleet: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--fleet", str(fleet), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Content, mode and mtime of every file: a re-run that changes nothing leaves this identical."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != ".lock":
            st = path.stat()
            out[str(path.relative_to(folder))] = (path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fleet(tmp_path: Path, capsys) -> Path:
    folder = tmp_path / "fleet"
    code, _, err = run(
        capsys, folder, "init-ca", "--broker", "mqtts://broker.city.example:8883", "--name", "city"
    )
    assert code == 0, err
    return folder


@pytest.fixture
def sheet(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.csv"
    path.write_text(INVENTORY)
    return path


def test_init_ca_keeps_the_key_private_and_never_overwrites(fleet: Path, capsys):
    assert mode(fleet / "ca" / "ca.key") == 0o600
    ca = x509.load_pem_x509_certificate((fleet / "ca" / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    before = snapshot(fleet)
    code, _, err = run(capsys, fleet, "init-ca", "--broker", "mqtts://other.example:8883")
    assert code == 1
    assert "never overwrites" in err and "Traceback" not in err
    assert snapshot(fleet) == before


def test_commands_without_a_ca_fail_clearly_and_write_nothing(tmp_path: Path, capsys, sheet: Path):
    empty = tmp_path / "no-fleet"
    empty.mkdir()
    for args in (
        ["add-node", "pole-x"],
        ["from-inventory", str(sheet)],
        ["broker-config"],
        ["list"],
        ["revoke", "pole-x"],
        ["add-operator", "ops"],
    ):
        code, _, err = run(capsys, empty, *args)
        assert code == 1, args
        assert "no fleet CA" in err and "init-ca" in err, err
    assert list(empty.iterdir()) == []


def test_bundle_has_a_valid_agent_config_certificates_and_system_files(fleet: Path, capsys, sheet: Path):
    code, out, err = run(capsys, fleet, "from-inventory", str(sheet))
    assert code == 0, err
    assert "3 node(s): 3 created" in out
    bundle = fleet / "nodes" / "pole-a"
    assert mode(bundle) == 0o700
    assert mode(bundle / "node.key") == 0o600 and mode(bundle / "node.crt") == 0o600

    config = load_config(bundle / "config.toml", environ={}).config  # what `agent check-config` does
    assert config.node.id == "pole-a" and config.node.site == "Market St / 5th"
    assert config.node.location is not None and config.node.location.lat == pytest.approx(52.37403)
    assert str(config.node.state_dir) == "/var/lib/vigil"
    assert config.capture.source == "picamera2"
    assert config.uplink.broker == "mqtts://broker.city.example:8883"
    assert config.uplink.topic_prefix == "vigil"
    assert str(config.uplink.tls.ca_file) == "/etc/vigil/ca.crt"
    assert str(config.uplink.tls.cert_file) == "/etc/vigil/node.crt"
    assert str(config.uplink.tls.key_file) == "/etc/vigil/node.key"
    assert (
        load_config(fleet / "nodes" / "pole-b" / "config.toml", environ={}).config.capture.source
        == "webcam:0"
    )
    assert load_config(fleet / "nodes" / "pole-c" / "config.toml", environ={}).config.node.location is None
    settings = config.model_dump()
    if "modem" in settings:  # the agent manages the EC25 through the udev names
        modem, gnss = settings["modem"], settings["gnss"]
        assert (modem["mode"], modem["port"], modem["vendor"], modem["apn"]) == (
            "managed",
            "/dev/vigil-at",
            "quectel",
            "internet.example",
        )
        assert (gnss["source"], gnss["port"]) == ("modem", "/dev/vigil-nmea")

    ca = x509.load_pem_x509_certificate((bundle / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((bundle / "node.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pole-a"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    days = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert 700 <= days <= 731

    info = json.loads((bundle / "node.json").read_text())
    assert info["certificate"]["serial"] == f"{cert.serial_number:x}"
    inventory = (fleet / "inventory.toml").read_text()
    assert f'serial = "{cert.serial_number:x}"' in inventory
    assert mode(fleet / "inventory.toml") == 0o600

    unit = (bundle / "system" / "vigil-agent.service").read_text()
    for line in (
        "Type=notify",
        "Restart=always",
        "WatchdogSec=60",
        "StateDirectory=vigil",
        "User=vigil",
        "ExecStart=/opt/vigil/launch --config /etc/vigil/config.toml",  # the current release (agent/update)
        "ProtectSystem=strict",
        "ReadWritePaths=/opt/vigil/releases",  # the one place under /opt an update may write
        "NoNewPrivileges=yes",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines(), line
    assert "PrivateDevices=yes" not in unit  # the camera and the modem live in /dev
    rules = (bundle / "system" / "70-vigil-modem.rules").read_text()
    assert 'ENV{ID_VENDOR_ID}!="2c7c"' in rules and 'ENV{ID_MODEL_ID}!="0125"' in rules
    assert 'ENV{ID_USB_INTERFACE_NUM}=="02", SYMLINK+="vigil-at"' in rules
    assert 'ENV{ID_USB_INTERFACE_NUM}=="01", SYMLINK+="vigil-nmea"' in rules
    assert rules.count('ENV{ID_MM_PORT_IGNORE}="1"') == 2
    assert '"1e0e"' in (fleet / "nodes" / "pole-b" / "system" / "70-vigil-modem.rules").read_text()
    assert "SYMLINK" not in (fleet / "nodes" / "pole-c" / "system" / "70-vigil-modem.rules").read_text()
    assert "SystemMaxUse=" in (bundle / "system" / "journald-vigil.conf").read_text()
    assert "RuntimeWatchdogSec=" in (bundle / "system" / "watchdog-vigil.conf").read_text()


def test_rerunning_changes_nothing(fleet: Path, capsys, sheet: Path):
    assert run(capsys, fleet, "from-inventory", str(sheet))[0] == 0
    assert run(capsys, fleet, "add-operator", "backoffice")[0] == 0
    assert run(capsys, fleet, "broker-config", "--port", "18883")[0] == 0
    before = snapshot(fleet)
    code, out, _ = run(capsys, fleet, "from-inventory", str(sheet))
    assert code == 0 and "3 node(s): 3 unchanged" in out
    code, out, _ = run(
        capsys,
        fleet,
        "add-node",
        "pole-a",
        "--site",
        "Market St / 5th",
        "--lat",
        "52.37403",
        "--lon",
        "4.88969",
        "--modem",
        "ec25",
        "--apn",
        "internet.example",
    )
    assert code == 0 and "unchanged" in out
    assert "unchanged" in run(capsys, fleet, "add-operator", "backoffice")[1]
    assert "unchanged" in run(capsys, fleet, "broker-config", "--port", "18883")[1]
    assert snapshot(fleet) == before


def test_changing_a_node_needs_update_and_keeps_its_certificate(fleet: Path, capsys):
    assert run(capsys, fleet, "add-node", "pole-a", "--site", "Old name")[0] == 0
    cert_before = (fleet / "nodes" / "pole-a" / "node.crt").read_bytes()
    before = snapshot(fleet)
    code, _, err = run(capsys, fleet, "add-node", "pole-a", "--site", "New name")
    assert code == 1 and "--update" in err and "'Old name' -> 'New name'" in err
    assert snapshot(fleet) == before
    code, out, _ = run(capsys, fleet, "add-node", "pole-a", "--site", "New name", "--update")
    assert code == 0 and "updated" in out and "config.toml" in out
    assert load_config(fleet / "nodes" / "pole-a" / "config.toml", environ={}).config.node.site == "New name"
    assert (fleet / "nodes" / "pole-a" / "node.crt").read_bytes() == cert_before


def test_bad_sheet_names_every_bad_row_and_field_and_writes_nothing(fleet: Path, capsys, tmp_path: Path):
    assert run(capsys, fleet, "add-node", "pole-z")[0] == 0
    before = snapshot(fleet)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,site,lat,lon,camera,modem\n"
        "pole-1,Ok,52.1,4.1,camera-module-3,ec25\n"
        "pole-2,Bad lat,north,4.1,camera-module-3,ec25\n"
        "pole-1,Duplicate,52.1,4.1,camera-module-3,ec25\n"
        "pole-3,Bad camera,52.1,4.1,gopro,ec25\n"
        "pole-4,Too few fields\n"
        "pole 5,Bad id,52.1,4.1,usb,none\n"
        "pole-6,Bad modem,52.1,4.1,usb,nokia\n"
        "pole-7,Lat only,52.1,,usb,none\n"
    )
    code, out, err = run(capsys, fleet, "from-inventory", str(bad))
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"{bad}:3 (node 'pole-2'): lat 'north' is not a number" in err
    assert f"{bad}:4: node id 'pole-1' duplicates line 2" in err
    assert f"{bad}:5 (node 'pole-3'): camera 'gopro'" in err
    assert f"{bad}:6: 2 fields, the header has 6" in err
    assert f"{bad}:7 (node 'pole 5'): id 'pole 5'" in err
    assert f"{bad}:8 (node 'pole-6'): modem 'nokia'" in err
    assert f"{bad}:9 (node 'pole-7'): lat and lon go together" in err
    assert snapshot(fleet) == before
    assert not (fleet / "nodes" / "pole-1").exists()

    bad.write_text("id,site,latitude\npole-1,x,1\n")
    code, _, err = run(capsys, fleet, "from-inventory", str(bad))
    assert code == 1 and "unknown column(s) 'latitude'" in err and f"{bad}:1" in err
    code, _, err = run(capsys, fleet, "from-inventory", str(tmp_path / "missing.csv"))
    assert code == 1 and "cannot read" in err
    assert snapshot(fleet) == before


def test_fleet_agent_defaults_are_merged_and_checked(fleet: Path, capsys):
    settings = fleet / "fleet.toml"
    settings.write_text(settings.read_text() + '\n[agent.detect]\nmodel = "yolox-nano"\n')
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0
    assert (
        load_config(fleet / "nodes" / "pole-a" / "config.toml", environ={}).config.detect.model
        == "yolox-nano"
    )
    settings.write_text(settings.read_text() + "\n[agent.spool]\nbudget_mb = -1\n")
    code, _, err = run(capsys, fleet, "add-node", "pole-b")
    assert code == 1 and "spool.budget_mb" in err and "fleet.toml" in err
    assert not (fleet / "nodes" / "pole-b").exists()


def test_certificates_are_renewed_near_expiry_with_the_same_key(fleet: Path, capsys):
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0
    bundle = fleet / "nodes" / "pole-a"
    key, cert = (bundle / "node.key").read_bytes(), (bundle / "node.crt").read_bytes()
    settings = fleet / "fleet.toml"
    settings.write_text(settings.read_text().replace("renew_before_days = 30", "renew_before_days = 1000"))
    code, out, _ = run(capsys, fleet, "add-node", "pole-a")
    assert code == 0 and "updated" in out and "expires" in out
    assert (bundle / "node.key").read_bytes() == key and (bundle / "node.crt").read_bytes() != cert
    new_serial = x509.load_pem_x509_certificate((bundle / "node.crt").read_bytes()).serial_number
    old_serial = x509.load_pem_x509_certificate(cert).serial_number
    inventory = (fleet / "inventory.toml").read_text()
    assert f"{old_serial:x}" in inventory and f'serial = "{new_serial:x}"' in inventory


def test_names_are_unique_across_nodes_and_operators(fleet: Path, capsys):
    assert run(capsys, fleet, "add-node", "pole-a")[0] == 0
    assert run(capsys, fleet, "add-operator", "backoffice")[0] == 0
    code, _, err = run(capsys, fleet, "add-operator", "pole-a")
    assert code == 1 and "already a node id" in err
    code, _, err = run(capsys, fleet, "add-node", "backoffice")
    assert code == 1 and "already an operator" in err
    code, _, err = run(capsys, fleet, "add-node", "POLE-A")
    assert code == 1 and "differs only in case" in err
    assert mode(fleet / "operators" / "backoffice" / "backoffice.key") == 0o600


def test_revoke_updates_crl_acl_and_list(fleet: Path, capsys, sheet: Path):
    assert run(capsys, fleet, "from-inventory", str(sheet))[0] == 0
    assert run(capsys, fleet, "broker-config", "--port", "18883")[0] == 0
    serial = x509.load_pem_x509_certificate(
        (fleet / "nodes" / "pole-c" / "node.crt").read_bytes()
    ).serial_number
    code, out, _ = run(capsys, fleet, "revoke", "pole-c")
    assert code == 0 and "revoked 1 certificate" in out and "restart Mosquitto" in out
    for crl_path in (fleet / "ca" / "crl.pem", fleet / "broker" / "crl.pem"):
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    acl = (fleet / "broker" / "acl").read_text()
    assert "user pole-c\ntopic deny #" in acl
    before = snapshot(fleet)
    code, out, _ = run(capsys, fleet, "revoke", "pole-c")
    assert code == 0 and "already revoked" in out and snapshot(fleet) == before
    code, _, err = run(capsys, fleet, "revoke", "pole-nope")
    assert code == 1 and "no node or operator named 'pole-nope'" in err

    code, out, _ = run(capsys, fleet, "list")
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith(("node", "operator"))}
    assert "revoked" in rows["pole-c"] and rows["pole-a"].rstrip().endswith("ok")
    assert "CRL number" in out and "1 revoked" in out
    listed = json.loads(run(capsys, fleet, "list", "--json")[1])
    assert {r["id"]: r["state"] for r in listed if r["kind"] == "node"} == {
        "pole-a": "ok",
        "pole-b": "ok",
        "pole-c": "revoked",
    }

    before = snapshot(fleet)
    code, out, _ = run(capsys, fleet, "from-inventory", str(sheet))  # the sheet may keep listing it
    assert code == 0 and "pole-c" in out and "skipped" in out and "2 unchanged, 1 revoked" in out
    assert snapshot(fleet) == before
    code, _, err = run(capsys, fleet, "add-node", "pole-c", "--site", "Harbour gate", "--camera", "hq-camera")
    assert code == 1 and "--reissue" in err
    code, out, _ = run(
        capsys, fleet, "add-node", "pole-c", "--site", "Harbour gate", "--camera", "hq-camera", "--reissue"
    )
    assert code == 0, out
    new_serial = x509.load_pem_x509_certificate(
        (fleet / "nodes" / "pole-c" / "node.crt").read_bytes()
    ).serial_number
    crl = x509.load_pem_x509_crl((fleet / "broker" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(new_serial) is None
    assert "user pole-c" not in (fleet / "broker" / "acl").read_text()


def test_broker_config_has_tls_identity_acl_and_crl(fleet: Path, capsys, tmp_path: Path):
    assert run(capsys, fleet, "add-operator", "backoffice")[0] == 0
    out_dir = tmp_path / "broker"
    code, _, err = run(
        capsys,
        fleet,
        "broker-config",
        "--port",
        "8884",
        "--out",
        str(out_dir),
        "--install-dir",
        "/etc/mosquitto/vigil",
        "--host",
        "broker.city.example",
        "--host",
        "10.0.0.5",
    )
    assert code == 0, err
    conf = (out_dir / "mosquitto.conf").read_text().splitlines()
    for line in (
        "listener 8884",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        "acl_file /etc/mosquitto/vigil/acl",
        "crlfile /etc/mosquitto/vigil/crl.pem",
        "cafile /etc/mosquitto/vigil/ca.crt",
    ):
        assert line in conf, line
    acl = (out_dir / "acl").read_text()
    assert "pattern write vigil/%u/#" in acl and "pattern read vigil/%u/cmd/#" in acl
    # backoffice was added without --role: a viewer, which may send only the read-only commands
    viewer = "user backoffice\ntopic read vigil/#\ntopic read $SYS/#\n"
    writes = "".join(f"topic write vigil/+/cmd/{c}\n" for c in ("ping", "status", "config/get"))
    assert viewer + writes in acl
    assert "topic write vigil/+/cmd/#" not in acl
    assert mode(out_dir / "server.key") == 0o600
    server = x509.load_pem_x509_certificate((out_dir / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.city.example"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )


def test_python_dash_m_entry_point_and_usage_errors(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_FLEET"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "provisioning",
            "--fleet",
            str(tmp_path / "f"),
            "init-ca",
            "--broker",
            "mqtt://plain.example:1883",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert res.returncode == 1 and "mqtts://" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "f" / "ca").exists()
    res = subprocess.run(
        [sys.executable, "-m", "provisioning", "list"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert res.returncode == 1 and "--fleet DIR is required" in res.stderr
