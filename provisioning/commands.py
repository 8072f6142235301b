"""The provisioning operations behind each command. Each one loads the fleet, computes everything it
will write (validating all input first), and only then writes, atomically, what differs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.control.roles import ROLES
from provisioning import broker as broker_mod
from provisioning.bundle import AUDIT_KEY, BUNDLE_DIR_MODE, audit_key, bundle_files
from provisioning.ca import (
    CA,
    Leaf,
    ask_passphrase,
    cert_pem,
    crl_pem,
    key_pem,
    load_crl,
    now,
    reuse_or_issue,
    serial_hex,
)
from provisioning.errors import ProvisionError
from provisioning.files import Plan
from provisioning.fleet import Fleet, FleetSettings, parse_broker_url
from provisioning.inventory import Inventory, Issued, NodeEntry, NodeSpec
from provisioning.names import IDENTITY_RULE, is_broker_dir, is_host, is_identity, is_unix_user
from provisioning.release import public_key_pem


@dataclass
class Outcome:
    """What a command reports: one line per thing it looked at, and whether anything changed."""

    lines: list[str] = field(default_factory=list)
    changed: bool = False
    failed: bool = False  # a check found problems: the command exits 1 after printing its lines

    def say(self, line: str, changed: bool = False) -> None:
        self.lines.append(line)
        self.changed |= changed


@dataclass
class Loaded:
    fleet: Fleet
    settings: FleetSettings
    ca: CA
    inventory: Inventory

    @property
    def renew_before(self) -> dt.timedelta:
        return dt.timedelta(days=self.settings.renew_before_days)

    def revoked_serials(self) -> set[int]:
        return {serial for serial, _ in self.inventory.revoked()}


def load(fleet: Fleet) -> Loaded:
    settings = fleet.settings()  # also checks that the CA exists
    return Loaded(fleet, settings, CA.load(fleet.ca_cert, fleet.ca_key), Inventory.load(fleet.inventory_file))


# -- init-ca -----------------------------------------------------------------------------------------


def init_ca(fleet: Fleet, settings: FleetSettings, days: int, *, encrypt: bool = False) -> Outcome:
    if fleet.exists():
        raise ProvisionError(
            f"{fleet.root} already holds a fleet ({fleet.settings_file.name} or ca/ exists); "
            "init-ca never overwrites a CA (every node certificate depends on it)"
        )
    parse_broker_url(settings.broker, "--broker")
    passphrase = ask_passphrase(new=True) if encrypt else None
    ca = CA.create(settings.name, days)
    plan = Plan()
    plan.dir(fleet.root, 0o700)
    plan.dir(fleet.ca_dir, 0o700)
    plan.file("ca", fleet.ca_key, key_pem(ca.key, passphrase), 0o600)
    plan.file("ca", fleet.ca_cert, cert_pem(ca.cert), 0o644)
    plan.file("ca", fleet.crl, crl_pem(ca.crl([], 1, settings.crl_days)), 0o644)
    plan.file("settings", fleet.settings_file, settings.render().encode(), 0o644)
    plan.file("inventory", fleet.inventory_file, Inventory(crl_number=1).dump(), 0o600)
    plan.apply()
    out = Outcome(changed=True)
    out.say(f"fleet CA created: {fleet.ca_cert} (valid until {ca.cert.not_valid_after_utc:%Y-%m-%d})")
    protection = "encrypted with your passphrase" if encrypt else "not encrypted: consider init-ca --encrypt"
    out.say(f"CA key: {fleet.ca_key} (0600, {protection}; keep it offline and backed up)")
    out.say(
        f"settings: {fleet.settings_file} (broker {settings.broker}, topic prefix {settings.topic_prefix})"
    )
    return out


# -- nodes -------------------------------------------------------------------------------------------


def retire_earlier(
    kind: str, name: str, issued: Issued, leaf: Leaf, *, reissue: bool, flag: str
) -> tuple[list[str], str | None]:
    """Call before recording `leaf`. A new key means the old one is lost, stolen or retired: every
    earlier certificate of the identity that is still valid is revoked (with --reissue), otherwise
    refused, so a stolen key never outlives its replacement. A renewal keeps the key and revokes nothing.
    Returns (serials revoked now, problem)."""
    earlier = [serial for serial in issued.issued if serial not in issued.revoked]
    if not leaf.new_key or not earlier:
        return [], None
    if not reissue:
        shown = ", ".join(serial[:12] + "…" for serial in earlier)
        return [], (
            f"{kind} {name!r}: a new key would be made ({leaf.reason}) while its certificate(s) {shown} are "
            f"still valid; restore its key from a backup, or pass {flag} to revoke them and issue a new key"
        )
    return issued.revoke(earlier, now()), None


def provision_nodes(
    fleet: Fleet,
    specs: list[NodeSpec],
    *,
    update: bool,
    reissue: Iterable[str] = (),
    skip_revoked: bool = False,
) -> Outcome:
    """Issue certificates and write bundles for `specs`; existing nodes whose details differ are
    updated only with `update` (the inventory sheet is the truth; a typo on the command line is not).
    Revoked nodes are re-issued only when named in `reissue`; a sheet may keep listing them
    (`skip_revoked`), a single add-node may not."""
    loaded = load(fleet)
    inv = loaded.inventory
    reissue = set(reissue)
    problems: list[str] = []
    skipped = [
        s.id
        for s in specs
        if skip_revoked and s.id in inv.nodes and inv.nodes[s.id].cert.is_revoked and s.id not in reissue
    ]
    specs = [s for s in specs if s.id not in skipped]
    lower_ids = {n.lower(): n for n in inv.nodes}
    for spec in specs:
        if spec.id in inv.operators:
            problems.append(f"node id {spec.id!r} is already an operator name")
        existing = inv.nodes.get(spec.id)
        if existing is None and spec.id.lower() in lower_ids:
            problems.append(
                f"node id {spec.id!r} differs only in case from existing node {lower_ids[spec.id.lower()]!r}"
            )
        if existing is not None and existing.spec != spec and not update:
            diff = ", ".join(
                f"{k} {getattr(existing.spec, k)!r} -> {getattr(spec, k)!r}"
                for k in spec.to_dict().keys() | existing.spec.to_dict().keys()
                if getattr(existing.spec, k) != getattr(spec, k)
            )
            problems.append(
                f"node {spec.id!r} already exists with other details ({diff}); pass --update to change it"
            )
        if existing is not None and existing.cert.is_revoked and spec.id not in reissue:
            problems.append(
                f"node {spec.id!r} is revoked; pass --reissue {spec.id} to give it a new key and certificate"
            )
    unknown = reissue - {s.id for s in specs}
    if unknown:
        problems.append(f"--reissue names node(s) not being provisioned: {', '.join(sorted(unknown))}")
    if problems:
        raise ProvisionError("\n".join(problems))

    ca_pem = loaded.fleet.ca_cert.read_bytes()
    release_key = public_key_pem(loaded.fleet)  # every bundle carries the fleet's release key once it has one
    revoked = loaded.revoked_serials()
    plan = Plan()
    issued_notes: dict[str, str] = {}
    retired: dict[str, list[str]] = {}
    existed = {s.id: fleet.bundle_dir(s.id).exists() for s in specs}
    for spec in specs:
        folder = fleet.bundle_dir(spec.id)
        leaf = reuse_or_issue(
            loaded.ca,
            spec.id,
            "node",
            folder / "node.key",
            folder / "node.crt",
            days=loaded.settings.node_days,
            renew_before=loaded.renew_before,
            revoked=revoked,
            force=spec.id in reissue,
        )
        if leaf.reason is not None:
            issued_notes[spec.id] = (
                f"certificate {serial_hex(leaf.cert.serial_number)[:12]}…, "
                f"valid until {leaf.cert.not_valid_after_utc:%Y-%m-%d} ({leaf.reason})"
            )
        entry = inv.nodes.setdefault(spec.id, NodeEntry(spec))
        entry.spec = spec
        flag = f"--reissue {spec.id}" if skip_revoked else "--reissue"
        gone, problem = retire_earlier(
            "node", spec.id, entry.cert, leaf, reissue=spec.id in reissue, flag=flag
        )
        if problem is not None:
            problems.append(problem)
        if gone:
            retired[spec.id] = gone
        entry.cert.record(serial_hex(leaf.cert.serial_number), leaf.cert.not_valid_after_utc)
        plan.dir(fleet.nodes_dir, 0o700)
        plan.dir(folder, BUNDLE_DIR_MODE)
        plan.dir(folder / "system", 0o755)
        secret = audit_key(folder / AUDIT_KEY, renew=spec.id in reissue)
        files = bundle_files(
            spec, loaded.settings, ca_pem, leaf.cert, leaf.cert_pem, leaf.key_pem, secret, release_key
        )
        for name, (data, mode) in files.items():
            plan.file(spec.id, folder / name, data, mode)
    if problems:  # nothing has been written yet
        raise ProvisionError("\n".join(problems))
    plan.file("inventory", fleet.inventory_file, inv.dump(), 0o600)
    changed = plan.apply()

    out = Outcome()
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for spec in specs:
        written = changed.get(spec.id, [])
        verb = "unchanged" if not written else ("updated" if existed[spec.id] else "created")
        counts[verb] += 1
        detail = issued_notes.get(spec.id) or (", ".join(written) if written else "")
        out.say(f"{spec.id:<20} {verb:<9} {detail}".rstrip(), changed=bool(written))
    for node_id in skipped:
        out.say(f"{node_id:<20} revoked   skipped (remove it from the sheet, or --reissue {node_id})")
        counts["revoked"] = counts.get("revoked", 0) + 1
    out.say(f"{len(specs) + len(skipped)} node(s): " + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    for node_id, serials in sorted(retired.items()):
        out.say(
            f"{node_id}: revoked {len(serials)} earlier certificate(s) "
            f"({', '.join(serial[:12] + '…' for serial in serials)})",
            True,
        )
    if any(s.id in reissue for s in specs) or retired:
        refresh_broker_outputs(loaded, out)
    if retired:
        out.say(f"CRL: {fleet.crl}; copy crl.pem and acl to the broker and restart Mosquitto")
    return out


# -- operators ---------------------------------------------------------------------------------------


def add_operator(
    fleet: Fleet, name: str, days: int | None, reissue: bool, role: str | None = None
) -> Outcome:
    """An operator certificate with a role (agent.control.roles). Without --role an existing operator
    keeps its role and a new one is a viewer. A changed role means a new certificate (same key) and
    the earlier ones revoked: a downgraded operator must not keep signing with its old role."""
    if not is_identity(name):
        raise ProvisionError(f"operator name {name!r} must be {IDENTITY_RULE}")
    if role is not None and role not in ROLES:
        raise ProvisionError(f"--role {role!r} must be one of {', '.join(ROLES)}")
    loaded = load(fleet)
    inv = loaded.inventory
    if name in inv.nodes:
        raise ProvisionError(f"operator name {name!r} is already a node id (names share one namespace)")
    issued = inv.operators.get(name, Issued())
    if issued.is_revoked and not reissue:
        raise ProvisionError(
            f"operator {name!r} is revoked; pass --reissue to give it a new key and certificate"
        )
    wanted = role or issued.role or ("viewer" if issued.serial is None else None)
    folder = fleet.operator_dir(name)
    leaf = reuse_or_issue(
        loaded.ca,
        name,
        "operator",
        folder / f"{name}.key",
        folder / f"{name}.crt",
        days=days or loaded.settings.operator_days,
        renew_before=loaded.renew_before,
        revoked=loaded.revoked_serials(),
        force=reissue,
        role=wanted,
    )
    retired, problem = retire_earlier("operator", name, issued, leaf, reissue=reissue, flag="--reissue")
    if problem is not None:
        raise ProvisionError(problem)
    role_changed = leaf.reason is not None and leaf.reason.startswith("role ")
    if role_changed:  # the same key, but no earlier certificate may keep speaking with the old role
        retired += issued.revoke([s for s in issued.issued if s not in issued.revoked], now())
    issued.role = wanted
    issued.record(serial_hex(leaf.cert.serial_number), leaf.cert.not_valid_after_utc)
    inv.operators[name] = issued
    plan = Plan()
    plan.dir(fleet.operators_dir, 0o700)
    plan.dir(folder, 0o700)
    plan.file(name, folder / "ca.crt", fleet.ca_cert.read_bytes(), 0o644)
    plan.file(name, folder / f"{name}.crt", leaf.cert_pem, 0o600)
    plan.file(name, folder / f"{name}.key", leaf.key_pem, 0o600)
    plan.file("inventory", fleet.inventory_file, inv.dump(), 0o600)
    changed = plan.apply()
    out = Outcome()
    shown = wanted or "none: issued before roles; re-run with --role to sign commands"
    if leaf.reason is None and not changed.get(name):
        out.say(f"operator {name} ({shown}): unchanged ({folder})")
    else:
        out.say(
            f"operator {name} ({shown}): certificate {serial_hex(leaf.cert.serial_number)[:12]}…, valid until "
            f"{leaf.cert.not_valid_after_utc:%Y-%m-%d}, in {folder}",
            changed=True,
        )
    if retired:
        out.say(
            f"operator {name}: revoked {len(retired)} earlier certificate(s) "
            f"({', '.join(serial[:12] + '…' for serial in retired)})",
            True,
        )
    if changed.get("inventory"):
        refresh_broker_outputs(loaded, out)  # a new operator needs its ACL entry; a re-issue the CRL
    return out


# -- broker ------------------------------------------------------------------------------------------


def crl_refresh_window(settings: FleetSettings) -> dt.timedelta:
    """How long before its next update a CRL is re-signed (revoke, broker-config) and warned about."""
    return dt.timedelta(days=min(30, max(1, settings.crl_days // 2)))


def crl_bytes(loaded: Loaded) -> bytes:
    """The current CRL, re-signed only when its content changes or it nears its next update."""
    revoked = loaded.inventory.revoked()
    existing = load_crl(loaded.fleet.crl)
    refresh = crl_refresh_window(loaded.settings)
    if existing is not None and loaded.ca.crl_is_current(existing, {s for s, _ in revoked}, refresh):
        return loaded.fleet.crl.read_bytes()
    loaded.inventory.crl_number += 1
    return crl_pem(loaded.ca.crl(revoked, loaded.inventory.crl_number, loaded.settings.crl_days))


def broker_plan(loaded: Loaded, options: broker_mod.BrokerOptions, crl: bytes, plan: Plan) -> str | None:
    """Add one broker output to `plan`; returns a note when the server certificate was (re)issued."""
    out_dir = Path(options.out)
    hosts = options.hosts or (loaded.settings.broker_host,)
    dns, ips = broker_mod.split_hosts(hosts)
    leaf = reuse_or_issue(
        loaded.ca,
        hosts[0],
        "server",
        out_dir / "server.key",
        out_dir / "server.crt",
        days=loaded.settings.server_days,
        renew_before=loaded.renew_before,
        revoked=loaded.revoked_serials(),
        dns_names=dns,
        ip_addresses=ips,
    )
    issued = loaded.inventory.servers.setdefault(hosts[0], Issued())
    issued.record(serial_hex(leaf.cert.serial_number), leaf.cert.not_valid_after_utc)
    group = f"broker:{out_dir}"
    plan.dir(out_dir, 0o750)
    ca_pem = loaded.fleet.ca_cert.read_bytes()
    for name, data in broker_mod.render_files(
        loaded.settings, loaded.inventory, options, ca_pem=ca_pem, crl=crl
    ).items():
        if "/" in name:
            plan.dir((out_dir / name).parent, 0o750)
        plan.file(group, out_dir / name, data)
    plan.file(group, out_dir / "ca.crt", ca_pem)
    plan.file(group, out_dir / "crl.pem", crl)
    plan.file(group, out_dir / "server.crt", leaf.cert_pem)
    plan.file(group, out_dir / "server.key", leaf.key_pem, 0o600)
    if leaf.reason is None:
        return None
    until = leaf.cert.not_valid_after_utc
    return f"server certificate for {', '.join(hosts)} valid until {until:%Y-%m-%d} ({leaf.reason})"


def check_broker_options(options: broker_mod.BrokerOptions, origin: str = "broker-config") -> None:
    """Everything that lands in mosquitto.conf or the broker certificate, checked whole: one directive
    per line, so a newline in a host, user or path would write a configuration Mosquitto refuses."""
    problems = []
    if not 1 <= options.port <= 65535:
        problems.append(f"--port {options.port} is not a TCP port")
    problems += [f"--host {h!r} is not a host name or IP address" for h in options.hosts if not is_host(h)]
    if options.bind is not None and not is_host(options.bind):
        problems.append(f"--bind {options.bind!r} is not an address or host name")
    if options.user is not None and not is_unix_user(options.user):
        problems.append(f"--user {options.user!r} is not a user name")
    if not is_broker_dir(options.files_dir):
        flag = "--install-dir" if options.install_dir is not None else "--out"
        problems.append(f"{flag} {options.files_dir!r} must be an absolute path without control characters")
    if problems:
        raise ProvisionError(f"{origin}: " + "; ".join(problems))


def broker_config(fleet: Fleet, options: broker_mod.BrokerOptions) -> Outcome:
    check_broker_options(options)
    loaded = load(fleet)
    crl = crl_bytes(loaded)
    plan = Plan()
    note = broker_plan(loaded, options, crl, plan)
    record = options.to_dict()
    outputs = [
        o for o in loaded.inventory.broker_outputs if Path(o["out"]).resolve() != Path(options.out).resolve()
    ]
    loaded.inventory.broker_outputs = [*outputs, record]
    plan.file("ca", fleet.crl, crl)
    plan.file("inventory", fleet.inventory_file, loaded.inventory.dump(), 0o600)
    changed = plan.apply()
    out = Outcome()
    files = changed.get(f"broker:{options.out}", [])
    out.say(
        f"broker configuration in {options.out}: "
        + (", ".join(files) + " written" if files else "unchanged"),
        changed=bool(files),
    )
    if note:
        out.say(note)
    for line in broker_mod.start_hint(options, loaded.inventory):
        out.say(line)
    return out


def refresh_broker_outputs(loaded: Loaded, out: Outcome) -> None:
    """Rewrite the CRL and ACL of every recorded broker output (after a revoke or a new operator)."""
    crl = crl_bytes(loaded)
    plan = Plan()
    for record in loaded.inventory.broker_outputs:
        options = broker_mod.BrokerOptions.from_dict(record)
        check_broker_options(options, f"{loaded.fleet.inventory_file} (broker output {options.out})")
        if Path(options.out).is_dir():
            broker_plan(loaded, options, crl, plan)
    plan.file("ca", loaded.fleet.crl, crl)
    plan.file("inventory", loaded.fleet.inventory_file, loaded.inventory.dump(), 0o600)
    changed = plan.apply()
    for group, files in sorted(changed.items()):
        if group.startswith("broker:"):
            out.say(
                f"broker configuration in {group[7:]}: {', '.join(files)} updated; restart Mosquitto", True
            )


# -- revoke ------------------------------------------------------------------------------------------


def revoke(fleet: Fleet, name: str) -> Outcome:
    loaded = load(fleet)
    found = loaded.inventory.identity(name)
    if found is None:
        raise ProvisionError(f"no node or operator named {name!r} in {fleet.inventory_file}")
    kind, issued = found
    fresh = issued.revoke_all(now())
    out = Outcome()
    if not fresh:
        out.say(f"{kind} {name} was already revoked; nothing to do")
        return out
    out.say(
        f"{kind} {name}: revoked {len(fresh)} certificate(s) ({', '.join(s[:12] + '…' for s in fresh)})", True
    )
    refresh_broker_outputs(loaded, out)
    out.say(
        f"CRL: {fleet.crl} (number {loaded.inventory.crl_number}); copy it to the broker and restart Mosquitto"
    )
    return out
