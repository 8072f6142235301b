"""`list` and `health`: every identity with every certificate ever issued to it and its state, and the
CRLs the brokers read, with warnings before one expires (an expired CRL makes Mosquitto refuse every
client). Read-only, and the CA key is never read (no passphrase needed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509

from provisioning.ca import load_crl, now, serial_hex
from provisioning.commands import Loaded, crl_refresh_window, load
from provisioning.fleet import Fleet
from provisioning.inventory import Issued


def crl_row(kind: str, path: Path, loaded: Loaded, current: dt.datetime) -> dict[str, object]:
    """One CRL (the fleet's, or one a broker reads) with its next update and a warning when it is
    near: an expired CRL makes Mosquitto refuse every client, so the whole fleet goes offline."""
    crl = load_crl(path)
    revoked = {serial for serial, _ in loaded.inventory.revoked()}
    row: dict[str, object] = {
        "kind": kind,
        "id": str(path),
        "site": "",
        "serial": "",
        "expires": "",
        "state": "missing",
        "revoked_at": "",
        "warning": "",
    }
    if crl is None:
        if kind == "broker-crl":
            row["warning"] = f"{path} is missing: the broker cannot start; run broker-config"
        return row
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    listed = {entry.serial_number for entry in crl}
    row["serial"] = str(number)
    state = f"{len(listed)} revoked"
    next_update = crl.next_update_utc
    deploy = "deploy crl.pem to the broker and restart it" if kind == "broker-crl" else "then deploy crl.pem"
    if next_update is not None:
        row["expires"] = next_update.strftime("%Y-%m-%d")
        left = next_update - current
        if left <= dt.timedelta(0):
            state = "EXPIRED"
            row["warning"] = (
                f"the CRL {path} expired on {next_update:%Y-%m-%d}: a broker using it refuses every client; "
                f"run `vigil-provision broker-config` and {deploy}"
            )
        elif left < crl_refresh_window(loaded.settings):
            state += f", expires in {left.days} day(s)"
            row["warning"] = (
                f"the CRL {path} expires on {next_update:%Y-%m-%d} ({left.days} day(s)); then the broker "
                f"refuses every client: run `vigil-provision broker-config` now and {deploy}"
            )
    if not row["warning"] and listed != revoked:
        state += ", out of date"
        row["warning"] = (
            f"the CRL {path} lists {len(listed)} serial(s), the inventory {len(revoked)} revoked: "
            f"run `vigil-provision broker-config` and {deploy}"
        )
    row["state"] = state
    return row


def listing(fleet: Fleet) -> list[dict[str, object]]:
    """Every identity with each certificate ever issued to it and its state, the CRLs (the fleet's and
    each broker output's) with their next update, and the CA. Needs no CA passphrase."""
    loaded = load(fleet)
    inv = loaded.inventory
    current = now()
    renew = loaded.renew_before

    def state(issued: Issued) -> str:
        if issued.is_revoked:
            return "revoked"
        if issued.not_after is None:
            return "no certificate"
        if issued.not_after <= current:
            return "expired"
        if issued.not_after - current < renew:
            return "renew soon"
        return "ok"

    def serials(issued: Issued) -> list[dict[str, str]]:
        return [
            {
                "serial": serial,
                "state": issued.serial_state(serial, current),
                "expires": issued.expires[serial].strftime("%Y-%m-%d") if serial in issued.expires else "",
                "revoked_at": issued.revoked[serial].strftime("%Y-%m-%d") if serial in issued.revoked else "",
            }
            for serial in issued.issued
        ]

    rows: list[dict[str, object]] = []
    for kind, items in (
        ("node", {k: (e.cert, e.spec.site) for k, e in inv.nodes.items()}),
        ("operator", {k: (i, "") for k, i in inv.operators.items()}),
        ("broker", {k: (i, "") for k, i in inv.servers.items()}),
    ):
        for name, (issued, site) in sorted(items.items()):
            rows.append(
                {
                    "kind": kind,
                    "id": name,
                    "site": site,
                    "serial": issued.serial or "",
                    "expires": issued.not_after.strftime("%Y-%m-%d") if issued.not_after else "",
                    "state": state(issued),
                    "revoked_at": issued.revoked[issued.serial].strftime("%Y-%m-%d")
                    if issued.is_revoked and issued.serial
                    else "",
                    "serials": serials(issued),
                    **({"role": issued.role or "none (issued before roles)"} if kind == "operator" else {}),
                }
            )
    rows.append(crl_row("crl", fleet.crl, loaded, current))
    for record in inv.broker_outputs:
        rows.append(crl_row("broker-crl", Path(str(record["out"])) / "crl.pem", loaded, current))
    ca_left = loaded.ca.cert.not_valid_after_utc - current
    rows.append(
        {
            "kind": "ca",
            "id": str(fleet.ca_cert),
            "site": "",
            "serial": serial_hex(loaded.ca.cert.serial_number),
            "expires": loaded.ca.cert.not_valid_after_utc.strftime("%Y-%m-%d"),
            "state": "ok" if ca_left > dt.timedelta(days=365) else f"expires in {ca_left.days} day(s)",
            "revoked_at": "",
            "warning": ""
            if ca_left > dt.timedelta(days=365)
            else "the fleet CA expires within a year: plan its rotation (docs/deploying.md)",
        }
    )
    return rows


def warnings(rows: list[dict[str, object]]) -> list[str]:
    return [str(row["warning"]) for row in rows if row.get("warning")]
