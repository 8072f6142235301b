"""The status page: one HTML document, one stylesheet, one script (agent/web/static/), no framework,
no external requests.

Made for a phone held at the pole in daylight: one column, large text and tap targets (at least
48 px), high contrast, state spelled out in words as well as colours (and a dark variant for night
work). The script polls /status.json every two seconds and long-polls /preview.jpg, and stops both
while the page is hidden, so a forgotten tab costs the node nothing.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
}


@cache
def asset(name: str) -> bytes:
    return resources.files("agent.web").joinpath("static", name).read_bytes()


def unauthorized() -> bytes:
    return asset("unauthorized.html")
