"""The fleet CA: keys, certificates and the revocation list, with the `cryptography` package.

ECDSA P-256 everywhere: small keys and fast handshakes on a Pi over LTE, and every TLS stack the
broker or a back office may use accepts it. Certificates start an hour in the past so a node whose
clock is slightly behind still accepts them.

The CA key may be encrypted with a passphrase (`init-ca --encrypt`). It is read only when something
must be signed, so `list`, and re-runs that change nothing, never ask for it. The passphrase comes
from $VIGIL_CA_PASSPHRASE or a prompt on the terminal, never from the command line (which other
users can read in /proc and which shells keep in their history).
"""

from __future__ import annotations

import datetime as dt
import getpass
import ipaddress
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.control.roles import ROLE_UNIT_PREFIX, cert_role
from provisioning.errors import ProvisionError

Kind = Literal["node", "operator", "server"]
BACKDATE = dt.timedelta(hours=1)
PrivateKey = ec.EllipticCurvePrivateKey
PASSPHRASE_ENV = "VIGIL_CA_PASSPHRASE"
MIN_PASSPHRASE = 12


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    protection: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, protection)


def is_encrypted_pem(data: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def ask_passphrase(*, new: bool = False) -> bytes:
    """The CA key's passphrase: $VIGIL_CA_PASSPHRASE, else asked on the terminal (twice when new)."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        if not sys.stdin.isatty():
            raise ProvisionError(
                f"the CA key is encrypted: set {PASSPHRASE_ENV} or run vigil-provision from a terminal"
                if not new
                else f"--encrypt needs a passphrase: set {PASSPHRASE_ENV} or run init-ca from a terminal"
            )
        value = getpass.getpass("New CA key passphrase: " if new else "CA key passphrase: ")
        if new and getpass.getpass("Repeat the passphrase: ") != value:
            raise ProvisionError("the passphrases differ; nothing was written")
    if new and len(value) < MIN_PASSPHRASE:
        raise ProvisionError(f"the CA key passphrase must have at least {MIN_PASSPHRASE} characters")
    if not value:
        raise ProvisionError("empty passphrase")
    return value.encode()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> PrivateKey | None:
    """The key at `path`, or None if it is missing or unusable (then a new one is made)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey) else None


def load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def serial_hex(serial: int) -> str:
    return f"{serial:x}"


def same_public_key(a: ec.EllipticCurvePublicKey, b: ec.EllipticCurvePublicKey) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


class CA:
    """The fleet CA: its certificate, and its key, read (and decrypted) the first time something is signed."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey | Callable[[], PrivateKey]) -> None:
        self.cert = cert
        self._key = key if isinstance(key, ec.EllipticCurvePrivateKey) else None
        self._load_key = None if isinstance(key, ec.EllipticCurvePrivateKey) else key

    @property
    def key(self) -> PrivateKey:
        if self._key is None:
            assert self._load_key is not None
            self._key = self._load_key()
        return self._key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key

    @classmethod
    def create(cls, fleet_name: str, days: int) -> CA:
        key = new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Vigil fleet {fleet_name}"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Vigil fleet CA {fleet_name}"),
            ]
        )
        start = now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - BACKDATE)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path, passphrase: Callable[[], bytes] = ask_passphrase) -> CA:
        cert = load_cert(cert_path)
        if cert is None:
            raise ProvisionError(f"cannot read the fleet CA certificate {cert_path}")

        def read_key() -> PrivateKey:
            try:
                data = key_path.read_bytes()
            except OSError as exc:
                raise ProvisionError(f"cannot read the fleet CA key {key_path}: {exc.strerror}") from None
            secret = passphrase() if is_encrypted_pem(data) else None
            try:
                key = serialization.load_pem_private_key(data, password=secret)
            except (ValueError, TypeError):
                if secret is not None:
                    raise ProvisionError(f"wrong passphrase for the fleet CA key {key_path}") from None
                raise ProvisionError(f"cannot read the fleet CA key {key_path}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ProvisionError(f"the fleet CA key {key_path} is not an ECDSA key")
            if not same_public_key(key.public_key(), cert.public_key()):  # type: ignore[arg-type]
                raise ProvisionError(f"the fleet CA key {key_path} does not belong to {cert_path}")
            return key

        return cls(cert, read_key)

    @property
    def fleet_org(self) -> str:
        orgs = self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(orgs[0].value) if orgs else "Vigil fleet"

    def issue(
        self,
        cn: str,
        public_key: ec.EllipticCurvePublicKey,
        days: int,
        kind: Kind,
        *,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
        role: str | None = None,
    ) -> x509.Certificate:
        """A leaf certificate: clientAuth for nodes and operators (CN = MQTT username), serverAuth for the
        broker. An operator's role (agent.control.roles) is a second organisational unit, `role:ROLE`,
        which nodes read from signed commands."""
        start = now()
        end = min(start + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        attributes = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.fleet_org),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        ]
        if role is not None:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_UNIT_PREFIX + role))
        subject = x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - BACKDATE)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.public_key), critical=False
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def signed(self, cert: x509.Certificate) -> bool:
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def crl(
        self, revoked: Iterable[tuple[int, dt.datetime]], number: int, days: int
    ) -> x509.CertificateRevocationList:
        start = now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(start - BACKDATE)
            .next_update(min(start + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.public_key), critical=False
            )
        )
        for serial, when in sorted(revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        return builder.sign(self.key, hashes.SHA256())

    def crl_is_current(
        self, crl: x509.CertificateRevocationList, serials: set[int], refresh_before: dt.timedelta
    ) -> bool:
        """True if `crl` is ours, lists exactly `serials` and will not expire within `refresh_before`."""
        if crl.issuer != self.cert.subject or not crl.is_signature_valid(self.public_key):
            return False
        listed = {entry.serial_number for entry in crl}
        next_update = crl.next_update_utc
        return listed == serials and next_update is not None and next_update - now() > refresh_before

    def leaf_problem(
        self,
        cert: x509.Certificate | None,
        key: PrivateKey | None,
        cn: str,
        renew_before: dt.timedelta,
        revoked: set[int],
    ) -> str | None:
        """Why an existing leaf certificate must be re-issued, or None if it is right as it is."""
        if cert is None:
            return "no certificate yet"
        if key is None:
            return "no usable private key"
        if not self.signed(cert):
            return "certificate not signed by this fleet CA"
        if common_name(cert) != cn:
            return f"certificate CN is {common_name(cert)!r}, not {cn!r}"
        if not same_public_key(cert.public_key(), key.public_key()):  # type: ignore[arg-type]
            return "certificate does not match the private key"
        if cert.serial_number in revoked:
            return "certificate is revoked"
        if cert.not_valid_after_utc - now() < renew_before:
            return f"certificate expires {cert.not_valid_after_utc:%Y-%m-%d}"
        return None


def load_crl(path: Path) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


@dataclass
class Leaf:
    """A leaf certificate and key ready to be written; `reason` says why it was (re)issued, None if kept."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes
    reason: str | None
    new_key: bool = False  # a key made now: every earlier certificate of the identity belongs to another key


def reuse_or_issue(
    ca: CA,
    cn: str,
    kind: Kind,
    key_path: Path,
    cert_path: Path,
    *,
    days: int,
    renew_before: dt.timedelta,
    revoked: set[int],
    force: bool = False,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    role: str | None = None,
) -> Leaf:
    """Keep the certificate on disk if it is right; otherwise issue a new one (with a new key only
    when there is no usable key or a new one is asked for), so re-runs change nothing."""
    key = None if force else load_key(key_path)
    cert = None if force else load_cert(cert_path)
    problem = "new key requested" if force else ca.leaf_problem(cert, key, cn, renew_before, revoked)
    if problem is None and cert is not None and kind == "operator" and cert_role(cert) != role:
        problem = f"role {cert_role(cert) or 'none'} -> {role}"
    if problem is None and cert is not None and (dns_names or ip_addresses):
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = set(sans.get_values_for_type(x509.DNSName)) | {
                str(a) for a in sans.get_values_for_type(x509.IPAddress)
            }
        except x509.ExtensionNotFound:
            have = set()
        if have != set(dns_names) | set(ip_addresses):
            problem = "host names changed"
    if problem is None and cert is not None and key is not None:
        return Leaf(cert, cert_path.read_bytes(), key_path.read_bytes(), None)
    fresh = key is None
    if key is None:
        key = new_key()
    cert = ca.issue(cn, key.public_key(), days, kind, dns_names=dns_names, ip_addresses=ip_addresses, role=role)
    return Leaf(cert, cert_pem(cert), key_pem(key), problem, new_key=fresh)
