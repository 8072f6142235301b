"""The node secret that keys the audit log's chain (HMAC-SHA256).

`vigil-provision` creates one per node (`audit.key` in its bundle, installed as
/etc/vigil/audit.key, 0640 root:vigil, and kept in the fleet directory so the back office can check
a copy of the log). A node without one (`agent --simulate` on a laptop, a bench) creates its own
beside the log and says so. The file holds 32 random bytes as 64 hex digits.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from pathlib import Path

from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

KEY_NAME = "audit.key"
KEY_BYTES = 32


class AuditKeyError(Exception):
    pass


def key_id(key: bytes) -> str:
    """A short public name for a key (entries say which key chained them)."""
    return hashlib.sha256(b"vigil-audit-key\n" + key).hexdigest()[:16]


def new_key_text() -> str:
    return secrets.token_hex(KEY_BYTES) + "\n"


def read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditKeyError(f"cannot read the audit key {path}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise AuditKeyError(f"{path} is not an audit key (64 hex digits)") from None
    if len(key) < 16:
        raise AuditKeyError(f"{path} is too short for an audit key")
    return key


def load_or_create(configured: Path | None, folder: Path) -> bytes:
    """The provisioned key (`privacy.audit.key_file`), else the node's own beside the log, created
    on first use. A provisioned key that cannot be read is an error in the log, and the node's own
    key is used so the log goes on."""
    if configured is not None:
        try:
            return read_key(configured.expanduser())
        except AuditKeyError as exc:
            log.error("%s; keying the audit log with a key of the node's own instead", exc)
    own = folder / KEY_NAME
    if own.exists():
        return read_key(own)
    atomic_write(own, new_key_text().encode(), mode=0o600)
    log.warning(
        "no audit key was provisioned (privacy.audit.key_file): created %s; the audit chain is keyed with "
        "a secret only this node knows (vigil-provision gives every node one the fleet keeps too)",
        own,
    )
    return read_key(own)
