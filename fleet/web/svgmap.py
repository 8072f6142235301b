"""The fleet map as SVG, drawn from the nodes' coordinates alone (no tile server needed, nothing
fetched from the internet), with a scale bar.

The projection is Web Mercator at a whole zoom level, the one map tiles use, so when a deployment
has a tile server (`vigil-fleet serve --tiles URL`) its tiles line up under the nodes exactly; at
city scale the distortion is negligible and the scale bar is computed at the map's centre latitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

TILE = 256
MAX_ZOOM = 19
SINGLE_NODE_ZOOM = 16
EARTH_M_PER_PX_Z0 = 156543.03392804097  # at the equator, zoom 0, 256-px tiles
MAX_LAT = 85.05112878
STATES = ("online", "silent", "offline", "unknown")


@dataclass(frozen=True)
class MapPoint:
    node: str
    lat: float
    lon: float
    state: str
    alarm: bool = False
    label: str = ""


def world_px(lat: float, lon: float, zoom: int) -> tuple[float, float]:
    """Web Mercator pixel coordinates at `zoom` (the tile grid's)."""
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    size = TILE * (1 << zoom)
    x = (lon + 180.0) / 360.0 * size
    rad = math.radians(lat)
    y = (1.0 - math.log(math.tan(rad) + 1.0 / math.cos(rad)) / math.pi) / 2.0 * size
    return x, y


def metres_per_px(lat: float, zoom: int) -> float:
    return EARTH_M_PER_PX_Z0 * math.cos(math.radians(lat)) / (1 << zoom)


def fit_zoom(points: list[MapPoint], width: int, height: int, margin: int) -> int:
    """The largest zoom at which every point fits inside the margins."""
    if len(points) < 2 or all((p.lat, p.lon) == (points[0].lat, points[0].lon) for p in points):
        return SINGLE_NODE_ZOOM
    for zoom in range(MAX_ZOOM, -1, -1):
        xs, ys = zip(*(world_px(p.lat, p.lon, zoom) for p in points), strict=True)
        if max(xs) - min(xs) <= width - 2 * margin and max(ys) - min(ys) <= height - 2 * margin:
            return zoom
    return 0


def nice_length(max_m: float) -> float:
    """The longest 1, 2 or 5 × 10^k metres that is not longer than `max_m`."""
    if max_m <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(max_m))
    for step in (5, 2, 1):
        if step * power <= max_m:
            return float(step * power)
    return float(power)


def distance_label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def render(
    points: list[MapPoint],
    *,
    width: int = 960,
    height: int = 540,
    margin: int = 40,
    tiles: str | None = None,
    attribution: str = "",
) -> str:
    """An SVG document; nodes are links to `#node/<id>` (the page's drill-down)."""
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="Fleet map" class="fleet-map">'
    )
    parts = [head, f'<rect class="map-bg" x="0" y="0" width="{width}" height="{height}"/>']
    if not points:
        parts.append(
            f'<text class="map-empty" x="{width / 2}" y="{height / 2}" text-anchor="middle">'
            "No node has a position yet (GNSS fix or configured lat/lon)</text></svg>"
        )
        return "".join(parts)
    zoom = fit_zoom(points, width, height, margin)
    pixels = [world_px(p.lat, p.lon, zoom) for p in points]
    xs, ys = [x for x, _ in pixels], [y for _, y in pixels]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    ox, oy = cx - width / 2, cy - height / 2  # world pixel at the SVG's top-left corner
    if tiles:
        parts.extend(_tiles(tiles, zoom, ox, oy, width, height))
    centre_lat = (min(p.lat for p in points) + max(p.lat for p in points)) / 2
    m_per_px = metres_per_px(centre_lat, zoom)
    if not tiles:
        parts.extend(_grid(nice_length(m_per_px * width / 4) / m_per_px, ox, oy, width, height))
    parts.extend(_scale_bar(m_per_px, width, height))
    labels = len(points) <= 40
    for point, (x, y) in sorted(
        zip(points, pixels, strict=True), key=lambda item: item[0].state != "online"
    ):  # problems on top
        sx, sy = x - ox, y - oy
        state = point.state if point.state in STATES else "unknown"
        title = (
            f"{point.node}: {state}"
            + (" — ALARM" if point.alarm else "")
            + (f" ({point.label})" if point.label else "")
        )
        parts.append(
            f'<a href={quoteattr("#node/" + point.node)} class="map-node state-{state}" '
            f"data-node={quoteattr(point.node)}>"
            f"<title>{escape(title)}</title>"
            + (f'<circle class="map-alarm" cx="{sx:.1f}" cy="{sy:.1f}" r="13"/>' if point.alarm else "")
            + f'<circle class="map-dot" cx="{sx:.1f}" cy="{sy:.1f}" r="8"/>'
            + (
                f'<text class="map-label" x="{sx + 12:.1f}" y="{sy + 4:.1f}">{escape(point.node)}</text>'
                if labels
                else ""
            )
            + "</a>"
        )
    if tiles and attribution:
        parts.append(
            f'<text class="map-attribution" x="{width - 6}" y="{height - 6}" text-anchor="end">'
            f"{escape(attribution)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _grid(step_px: float, ox: float, oy: float, width: int, height: int) -> list[str]:
    """Faint lines one scale-bar length apart, anchored to the projection (they do not move with the view)."""
    path = []
    x = math.ceil(ox / step_px) * step_px - ox
    while x < width:
        path.append(f"M{x:.1f} 0V{height}")
        x += step_px
    y = math.ceil(oy / step_px) * step_px - oy
    while y < height:
        path.append(f"M0 {y:.1f}H{width}")
        y += step_px
    return [f'<path class="map-grid" d="{" ".join(path)}"/>']


def _scale_bar(m_per_px: float, width: int, height: int) -> list[str]:
    length_m = nice_length(m_per_px * width / 4)
    length_px = length_m / m_per_px
    x0, y0 = 16, height - 18
    return [
        f'<g class="map-scale" data-metres="{length_m:g}" data-px="{length_px:.1f}">',
        f'<rect x="{x0 - 6}" y="{y0 - 20}" width="{length_px + 12:.1f}" height="30" class="map-scale-bg"/>',
        f'<path d="M{x0} {y0 - 6} V{y0} H{x0 + length_px:.1f} V{y0 - 6}" class="map-scale-bar"/>',
        f'<text x="{x0 + length_px / 2:.1f}" y="{y0 - 8}" text-anchor="middle">{distance_label(length_m)}</text>',
        "</g>",
    ]


def _tiles(template: str, zoom: int, ox: float, oy: float, width: int, height: int) -> list[str]:
    first_x, first_y = math.floor(ox / TILE), math.floor(oy / TILE)
    last_x, last_y = math.floor((ox + width) / TILE), math.floor((oy + height) / TILE)
    count = 1 << zoom
    out = ['<g class="map-tiles">']
    for ty in range(max(0, first_y), min(count - 1, last_y) + 1):
        for tx in range(first_x, last_x + 1):
            url = template.format(z=zoom, x=tx % count, y=ty)
            out.append(
                f'<image href={quoteattr(url)} x="{tx * TILE - ox:.1f}" y="{ty * TILE - oy:.1f}" '
                f'width="{TILE}" height="{TILE}"/>'
            )
    out.append("</g>")
    return out
