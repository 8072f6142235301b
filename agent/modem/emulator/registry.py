"""Named emulators that `vigilemu://NAME` URLs reach, made on demand from the URL's settings.

The URL handler (`agent.modem.urlhandlers.protocol_vigilemu`) is the only production-side caller;
tests `register()` an emulator they built and scripted themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agent.modem.emulator.device import AT, NMEA, ModemEmulator
from agent.modem.emulator.scenario import Scenario
from agent.modem.urlhandlers import SCHEME, URL_SETTINGS
from agent.modem.urlhandlers import register as register_url_handler

_REGISTRY: dict[str, ModemEmulator] = {}
_LOCK = threading.Lock()


def _flag(text: str) -> bool:
    return text.lower() in ("1", "on", "true", "yes")


# query key → (Scenario field, converter)
_CONVERT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "vendor": ("vendor", str),
    "gnss": ("gnss_on", _flag),
    "lat": ("lat", float),
    "lon": ("lon", float),
    "alt": ("alt", float),
    "route": ("route", Path),
    "power_switch": ("power_switch", Path),
    "nmea_interval_s": ("nmea_interval_s", float),
}


def register(emulator: ModemEmulator) -> str:
    """Make `vigilemu://NAME` reach this emulator; returns the AT port URL."""
    register_url_handler()
    with _LOCK:
        _REGISTRY[emulator.name] = emulator
    return emulator.url()


def unregister(emulator: ModemEmulator) -> None:
    with _LOCK:
        if _REGISTRY.get(emulator.name) is emulator:
            del _REGISTRY[emulator.name]


def forget(name: str) -> None:
    """Drop whatever emulator answers to NAME (`agent.modem.urlhandlers.release`)."""
    with _LOCK:
        _REGISTRY.pop(name, None)


def registered(name: str) -> ModemEmulator | None:
    with _LOCK:
        return _REGISTRY.get(name)


def scenario_from_query(query: dict[str, str]) -> Scenario:
    """The scenario a URL describes. Without `timing=real` it boots and registers at once (a shell
    demo should not wait), otherwise with the scenario's own delays."""
    unknown = set(query) - URL_SETTINGS
    if unknown:
        raise ValueError(f"unknown emulator URL settings: {', '.join(sorted(unknown))}")
    timing = query.get("timing", "instant")
    if timing not in ("instant", "real"):
        raise ValueError(f"timing must be instant or real, not {timing!r}")
    overrides: dict[str, Any] = {} if timing == "real" else {"boot_s": 0.0, "register_delay_s": 0.0}
    for key, (name, convert) in _CONVERT.items():
        if key in query:
            try:
                overrides[name] = convert(query[key])
            except ValueError:
                raise ValueError(f"emulator URL setting {key}={query[key]!r} is not valid") from None
    return Scenario.named(query.get("scenario", "normal"), **overrides)


def lookup(url: str) -> tuple[ModemEmulator, str]:
    """`vigilemu://NAME[/nmea][?…]` → (emulator, channel). An unknown NAME gets a new emulator built
    from the query, so `agent modem status --port vigilemu://demo` works in a shell and
    `agent --simulate` describes its modem in the URL it opens."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or not parts.netloc:
        raise ValueError(f"not an emulator URL: {url!r} (expected {SCHEME}://NAME[/nmea])")
    channel = NMEA if parts.path.strip("/") == "nmea" else AT
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    with _LOCK:
        emulator = _REGISTRY.get(parts.netloc)
        if emulator is None:
            emulator = ModemEmulator(scenario_from_query(query), name=parts.netloc)
            _REGISTRY[parts.netloc] = emulator
    return emulator, channel
