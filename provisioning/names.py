"""Every name the provisioning tool writes into a certificate, a file name, a topic or a broker file.

Names end up in places with their own syntax: the Mosquitto ACL and configuration (one directive per
line), TOML files, directory names, MQTT topic levels. So every check is a *full* match
(`re.fullmatch`): with `re.match` and a pattern ending in `$`, a trailing newline passes (`$`
matches before it), and `add-operator $'pole-1\\n'` wrote an ACL that Mosquitto refuses to load,
taking the whole fleet offline at its next restart.

The agent's own schema uses the same patterns through pydantic, whose Rust regex engine reads `$`
as the end of the text; Python code must never rely on that and always calls `fullmatch`.
"""

from __future__ import annotations

import ipaddress
import re

from agent.config.schema import NODE_ID_PATTERN

IDENTITY = re.compile(NODE_ID_PATTERN)  # node ids and operator names: certificate CN, topic level, folder
TOPIC_PREFIX = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
APN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}")
HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"{HOST_LABEL}(?:\.{HOST_LABEL})*\.?")
UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

IDENTITY_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_identity(name: object) -> bool:
    return isinstance(name, str) and IDENTITY.fullmatch(name) is not None


def is_topic_prefix(prefix: object) -> bool:
    return isinstance(prefix, str) and TOPIC_PREFIX.fullmatch(prefix) is not None


def is_apn(apn: str) -> bool:
    return APN.fullmatch(apn) is not None


def is_host(host: str) -> bool:
    """A DNS name or an IP address (what a certificate SAN or a listener address may be)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and HOST_NAME.fullmatch(host) is not None
    return True


def is_unix_user(name: str) -> bool:
    return UNIX_USER.fullmatch(name) is not None


def is_broker_dir(path: str) -> bool:
    """A directory the broker reads its files from: absolute, and nothing that ends a config line early."""
    return path.startswith("/") and not has_control_chars(path)


def has_control_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)
