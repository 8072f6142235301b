"""Vigil: edge agent for street camera nodes.

Stages live in their own packages (capture, detect, track, events, uplink, modem, control, web,
config); nothing here touches hardware at import time.
"""

__version__ = "0.1.0"
