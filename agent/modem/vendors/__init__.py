"""Per-vendor modem specifics over the generic 3GPP base, chosen from +CGMI/+CGMM or config."""

from __future__ import annotations

from agent.modem.vendors.generic import Vendor
from agent.modem.vendors.quectel import Quectel
from agent.modem.vendors.simcom import SimCom

VENDORS: dict[str, type[Vendor]] = {"quectel": Quectel, "simcom": SimCom, "generic": Vendor}


def choose_vendor(configured: str, manufacturer: str, model: str) -> Vendor:
    """The configured vendor, or (auto) the first whose matcher accepts the identity."""
    if configured != "auto":
        return VENDORS[configured]()
    for cls in (Quectel, SimCom):
        if cls.matches(manufacturer, model):
            return cls()
    return Vendor()


__all__ = ["VENDORS", "Quectel", "SimCom", "Vendor", "choose_vendor"]
