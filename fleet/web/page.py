"""The operators' page: one HTML document, one stylesheet, one script (fleet/web/static/), no framework,
no external requests (a tile server, when configured, is the only other origin).

Made for a control-room screen and usable on a phone: the map and the node list side by side, the
latest events with their thumbnails (redacted on the node, shown as sent), and a drill-down per node
(`#node/<id>`). State is spelled out in words as well as colours. The script polls the JSON API every
five seconds and stops while the page is hidden.
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
    return resources.files("fleet.web").joinpath("static", name).read_bytes()
