"""Operator roles: what each may ask a node, in order of power.

- viewer: read only (ping, status, config/get);
- operator: also changes what the node watches and sends (config/set, snapshot);
- admin: also changes what the node is (model and agent updates, modem reset, restart).

A role is written into the operator's certificate by `vigil-provision add-operator --role ROLE` (an
organisational unit `role:ROLE`), so a node checks it from the signed request alone; the broker ACL
generated from the same roles lets each operator publish only the commands its role may send.
Every command declares its role (agent.control.commands.Command.role); a command that does not
say is admin-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from cryptography import x509

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_UNIT_PREFIX = "role:"  # an organizationalUnitName of the operator certificate: role:admin
OPERATOR_UNIT = "operator"  # the organizationalUnitName vigil-provision gives every operator certificate


def allows(have: str, need: str) -> bool:
    """Whether a caller with role `have` may run a command that needs `need`."""
    if have not in ROLES or need not in ROLES:
        return False
    return ROLES.index(have) >= ROLES.index(need)


def units(cert: x509.Certificate) -> list[str]:
    from cryptography.x509.oid import NameOID

    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]


def cert_role(cert: x509.Certificate) -> Role | None:
    """The role an operator certificate carries, or None (a node's or broker's certificate, or an
    operator issued before roles existed)."""
    found = units(cert)
    if OPERATOR_UNIT not in found:
        return None
    roles = [u.removeprefix(ROLE_UNIT_PREFIX) for u in found if u.startswith(ROLE_UNIT_PREFIX)]
    if len(roles) != 1:
        return None
    role = roles[0]
    for known in ROLES:
        if role == known:
            return known
    return None
