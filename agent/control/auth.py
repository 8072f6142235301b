"""Who sent a command, and may they: the one gate every command passes (agent.control.stage.handle).

A signed request (agent.control.signing) names its sender by certificate. The node checks:

1. the certificate was issued by the fleet CA (`control.ca_file`, default `uplink.tls.ca_file`), is
   an operator certificate (not a node's or the broker's) for client authentication and signatures,
   is within its validity period on the trusted clock, and its serial is not in the newest CRL the
   node knows (a request may carry a newer CRL; a CRL is signed by the CA, so it may come from anyone);
2. the signature covers this node, this command, the id, `ts`, nonce, arguments and actor;
3. (agent.control.replay) `ts` is fresh and the id and nonce are new;
4. the role in the certificate is enough for the command (agent.control.roles), and the operator has
   not used up its rate (a token bucket per identity).

A request without a signature runs with `control.unsigned_role` (by default admin on a development
node, refused in production). What the audit log records as the actor says which of the two it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.control.protocol import CommandError
from agent.control.roles import Role, allows, cert_role
from agent.control.signing import canonical, signature_valid, unb64
from agent.fsutil import atomic_write

if TYPE_CHECKING:
    from agent.config.schema import Config
    from agent.control.protocol import Envelope

log = logging.getLogger(__name__)

CRL_NAME = "fleet-crl.der"


class AuthError(CommandError):
    """A request whose sender cannot be verified, or who may not do this."""


@dataclass(frozen=True)
class Caller:
    """The sender of a request, as far as the node could verify it."""

    name: str  # the certificate's CN, or "unsigned"
    role: Role | None  # None: may do nothing
    verified: bool
    serial: str | None = None
    claimed: str | None = None  # the request's `actor` (what it says; signed along when verified)

    def describe(self) -> str:
        if self.verified:
            claim = f", for {self.claimed}" if self.claimed and self.claimed != self.name else ""
            return f"{self.name} ({self.role}, certificate {self.serial}{claim})"
        return "unsigned request" + (f" (claims {self.claimed!r})" if self.claimed else "")


def unsigned_role(config: Config) -> Role | None:
    """What an unsigned request may do on this node (control.unsigned_role, else by node.profile)."""
    chosen = config.control.unsigned_role
    if chosen is None:
        chosen = "admin" if config.node.profile == "development" else "none"
    if chosen == "none":
        return None
    return chosen


class TrustStore:
    """The fleet CA certificates and the newest CRL the node has been given."""

    def __init__(self, ca_file: Path | None, crl_path: Path) -> None:
        self.ca_file = ca_file
        self.crl_path = crl_path
        self._cas: list[x509.Certificate] | None = None
        self._crl: x509.CertificateRevocationList | None = None
        self._lock = threading.Lock()
        self._load_crl()

    def cas(self) -> list[x509.Certificate]:
        if self._cas is None:
            if self.ca_file is None:
                raise AuthError(
                    "signed commands need the fleet CA: set control.ca_file (or uplink.tls.ca_file) on the node"
                )
            try:
                self._cas = x509.load_pem_x509_certificates(self.ca_file.read_bytes())
            except (OSError, ValueError) as exc:
                log.error("cannot read the fleet CA %s: %s", self.ca_file, exc)
                raise AuthError(f"the node cannot read its fleet CA ({self.ca_file})") from None
        return self._cas

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        for ca in self.cas():
            if cert.issuer != ca.subject:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    def _load_crl(self) -> None:
        try:
            self._crl = x509.load_der_x509_crl(self.crl_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring an unreadable CRL %s: %s", self.crl_path, exc)

    @staticmethod
    def _number(crl: x509.CertificateRevocationList) -> int:
        try:
            return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        except x509.ExtensionNotFound:
            return 0

    def offer_crl(self, der: bytes) -> None:
        """Keep `der` if it is a CRL of the fleet CA newer than the one kept; otherwise ignore it."""
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError:
            raise AuthError("auth.crl is not a CRL") from None
        issuer = next((ca for ca in self.cas() if ca.subject == crl.issuer), None)
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise AuthError("auth.crl is not signed by the fleet CA")
        with self._lock:
            if self._crl is not None and self._number(crl) <= self._number(self._crl):
                return
            atomic_write(self.crl_path, der, mode=0o644)
            self._crl = crl
        log.info("fleet CRL number %d kept (%d revoked certificates)", self._number(crl), len(list(crl)))

    def revoked(self, cert: x509.Certificate) -> bool:
        with self._lock:
            crl = self._crl
        return crl is not None and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    @property
    def crl_number(self) -> int | None:
        with self._lock:
            return self._number(self._crl) if self._crl is not None else None


class RateLimiter:
    """A token bucket per identity: `burst` at once, then `per_min` a minute."""

    def __init__(self, per_min: float, burst: int) -> None:
        self.rate = per_min / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, monotonic time)
        self._lock = threading.Lock()

    def take(self, name: str) -> float | None:
        """None when allowed, else the seconds until the next request would be."""
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(name, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self._buckets[name] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[name] = (tokens - 1.0, now)
            if len(self._buckets) > 1024:  # identities are few; never let the table grow without bound
                oldest = min(self._buckets, key=lambda k: self._buckets[k][1])
                del self._buckets[oldest]
            return None


class Authenticator:
    def __init__(self, config: Config, trust: TrustStore, node: str) -> None:
        self.config = config
        self.trust = trust
        self.node = node
        self.limiter = RateLimiter(config.control.rate_per_min, config.control.rate_burst)

    def identify(self, envelope: Envelope, command: str, reference: float | None) -> Caller:
        """The verified sender of `envelope` (AuthError when a signature does not hold), or the unsigned
        caller with the node's unsigned role. `reference` is the trusted time (or its lower bound)."""
        auth = envelope.auth
        if auth is None:
            return Caller("unsigned", unsigned_role(self.config), False, claimed=envelope.actor)
        if envelope.ts is None or isinstance(envelope.ts, bool):
            raise AuthError("a signed request needs ts")
        if auth.crl is not None:
            self.trust.offer_crl(unb64(auth.crl, "crl"))
        try:
            cert = x509.load_der_x509_certificate(unb64(auth.cert, "cert"))
        except ValueError:
            raise AuthError("auth.cert is not a certificate") from None
        self._check_certificate(cert, reference)
        message = canonical(
            node=self.node, command=command, request_id=envelope.id, ts=envelope.ts, nonce=auth.nonce,
            args=envelope.args, actor=envelope.actor,
        )
        if not signature_valid(cert.public_key(), unb64(auth.sig, "sig"), message):
            raise AuthError(
                "signature does not match (signed for another node, command or arguments, or altered on the way)"
            )
        role = cert_role(cert)
        name = _common_name(cert)
        return Caller(name, role, True, serial=f"{cert.serial_number:x}"[:12], claimed=envelope.actor)

    def _check_certificate(self, cert: x509.Certificate, reference: float | None) -> None:
        if self.trust.issuer_of(cert) is None:
            raise AuthError("the signing certificate was not issued by this node's fleet CA")
        if reference is not None:
            when = dt.datetime.fromtimestamp(reference, dt.UTC)
            if when < cert.not_valid_before_utc or when > cert.not_valid_after_utc:
                raise AuthError(
                    f"the signing certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%d})"
                )
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise AuthError("the signing certificate is not an operator certificate") from None
        if constraints.ca or not usage.digital_signature or ExtendedKeyUsageOID.CLIENT_AUTH not in extended:
            raise AuthError("the signing certificate is not an operator certificate")
        if cert_role(cert) is None:
            raise AuthError(
                f"the certificate of {_common_name(cert)!r} carries no operator role; re-issue it with "
                f"`vigil-provision add-operator {_common_name(cert)} --role viewer|operator|admin`"
            )
        if self.trust.revoked(cert):
            raise AuthError(f"the certificate of {_common_name(cert)!r} is revoked")

    def check_role(self, caller: Caller, command: str, need: Role) -> None:
        if caller.role is None:
            raise AuthError(
                "unsigned commands are refused on this node (control.unsigned_role); sign it: "
                f"vigil-fleet cmd NODE {command} --fleet DIR --operator NAME"
            )
        if not allows(caller.role, need):
            who = caller.name if caller.verified else "an unsigned request"
            raise AuthError(f"{command} needs the {need} role; {who} has {caller.role}")

    def check_rate(self, caller: Caller) -> None:
        wait = self.limiter.take(caller.name)
        if wait is not None:
            raise AuthError(
                f"rate limit: {caller.name} sent more than control.rate_burst = {self.config.control.rate_burst} "
                f"commands at once or {self.config.control.rate_per_min:g} a minute; retry in {math.ceil(wait)}s"
            )


def _common_name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "?"
