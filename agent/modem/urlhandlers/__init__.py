"""pyserial URL handlers (`serial.protocol_handler_packages`): `vigilemu://` reaches the built-in
modem emulator.

This is the whole seam between production code and the emulator. Production code only opens
URLs: `register()` teaches pyserial the scheme, and pyserial imports `protocol_vigilemu` (which
imports `agent.modem.emulator`) only when a `vigilemu://` URL is opened. `emulator_url()` writes
such a URL; the emulator reads it (`agent.modem.emulator.registry.lookup`).
"""

from __future__ import annotations

import sys
from urllib.parse import urlencode, urlsplit

SCHEME = "vigilemu"
_PACKAGE = __name__

# Settings an emulator URL may carry (query keys), as `agent.modem.emulator.registry` reads them.
URL_SETTINGS = frozenset(
    {"scenario", "vendor", "gnss", "lat", "lon", "alt", "route", "power_switch", "timing", "nmea_interval_s"}
)


def register() -> None:
    """Teach pyserial's serial_for_url the `vigilemu://` scheme (idempotent, imports nothing else)."""
    import serial

    if _PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(_PACKAGE)


def emulator_url(name: str, *, nmea: bool = False, **settings: object) -> str:
    """`vigilemu://NAME[/nmea][?k=v…]`: an emulated modem's AT (or NMEA) port.

    An unknown NAME is built from the settings on first open (`scenario`, `vendor`, `gnss`, `lat`,
    `lon`, `alt`, `route`, `power_switch`, `nmea_interval_s`, and `timing=real` for a modem that
    boots and registers as slowly as its scenario says rather than at once).
    """
    unknown = set(settings) - URL_SETTINGS
    if unknown:
        raise ValueError(f"unknown emulator URL settings: {', '.join(sorted(unknown))}")
    query = urlencode({k: str(v) for k, v in settings.items() if v is not None})
    return f"{SCHEME}://{name}" + ("/nmea" if nmea else "") + (f"?{query}" if query else "")


def is_emulator_url(url: str) -> bool:
    return urlsplit(url).scheme == SCHEME


def release(url: str) -> None:
    """Forget the emulator behind `url`, if one was ever made in this process (nothing is imported)."""
    registry = sys.modules.get("agent.modem.emulator.registry")
    forget = getattr(registry, "forget", None)
    if forget is not None and is_emulator_url(url):
        forget(urlsplit(url).netloc)


__all__ = ["SCHEME", "URL_SETTINGS", "emulator_url", "is_emulator_url", "register", "release"]
