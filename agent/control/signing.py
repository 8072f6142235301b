"""Signed commands: what an operator signs and how (the wire format shared by the node and `vigil-fleet cmd`).

An operator signs each request with the key of its fleet certificate (ECDSA P-256, SHA-256). The
signature is detached, in the request's `auth` object, and covers the canonical form of everything
that decides what the node does::

    vigil-cmd/1\\n{"actor":…,"args":{…},"command":"config/set","id":"…","node":"pole-17","nonce":"…","ts":…}

(JSON with sorted keys, no spaces, ASCII escapes, no NaN: both sides produce the same bytes from
the same values). The node id and the command name are inside, so a request signed for one node or
one command is worthless for another; `ts` and `nonce` make every request unique and datable. The
request carries the operator's certificate (DER, base64) so the node needs only the fleet CA, and
may carry the fleet's newest CRL (DER, base64), which the node keeps when it is newer than its own.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SCHEME = b"vigil-cmd/1\n"
NONCE_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
MAX_CERT_CHARS = 8192
MAX_SIG_CHARS = 256
MAX_CRL_CHARS = 49152


class SigningError(ValueError):
    """A request that cannot be signed (or its signature cannot be read): bad values, not a key."""


def canonical(
    *, node: str, command: str, request_id: str, ts: float | str, nonce: str, args: dict[str, Any],
    actor: str | None,
) -> bytes:
    """The exact bytes a signature covers."""
    body = {
        "actor": actor,
        "args": args,
        "command": command,
        "id": request_id,
        "node": node,
        "nonce": nonce,
        "ts": ts,
    }
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SigningError(f"the request cannot be put in canonical form: {exc}") from None
    return SCHEME + text.encode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise SigningError(f"auth.{what} is not base64") from None


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def sign_request(
    key: ec.EllipticCurvePrivateKey,
    cert_der: bytes,
    *,
    node: str,
    command: str,
    request_id: str,
    args: dict[str, Any],
    actor: str | None = None,
    ts: float | None = None,
    nonce: str | None = None,
    crl_der: bytes | None = None,
) -> dict[str, Any]:
    """A complete signed request (the JSON object to publish on ``{prefix}/{node}/cmd/{command}``)."""
    when = round(time.time() if ts is None else ts, 3)
    nonce = nonce or new_nonce()
    message = canonical(
        node=node, command=command, request_id=request_id, ts=when, nonce=nonce, args=args, actor=actor
    )
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    auth: dict[str, Any] = {"nonce": nonce, "cert": b64(cert_der), "sig": b64(signature)}
    if crl_der is not None:
        auth["crl"] = b64(crl_der)
    request: dict[str, Any] = {"id": request_id, "ts": when, "args": args, "auth": auth}
    if actor is not None:
        request["actor"] = actor
    return request


def signature_valid(public_key: Any, signature: bytes, message: bytes) -> bool:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningError("the operator key is not an ECDSA key")
    return key
