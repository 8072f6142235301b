"""The operators' page over HTTP (the browser test is tests/test_fleet_browser.py): what the API and the
map serve from a real database, /metrics, and the same access rules as the node's status page."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

from fleet.errors import FleetError
from fleet.eventschema import EventValidator
from fleet.store.db import Database, DbUrl
from fleet.store.writer import BatchWriter
from fleet.web import svgmap
from fleet.web.service import FleetWeb
from fleet.wire import Incoming, WireParser
from tests.fleet_support import dumps, event, fleet_cli, jpeg

TOKEN = "control-room-token-2026"
SVG = "{http://www.w3.org/2000/svg}"


def fill(url: str) -> dict[str, str]:
    """Three nodes: one online with a thumbnail, one offline, one with a gap raised to an alarm."""
    db = Database.open(url)
    writer = BatchWriter(db, "vigil")
    parser = WireParser("vigil", EventValidator())
    image = jpeg(5)
    here = {"lat": 52.3731, "lon": 4.8922, "mode": "static"}
    shot = event("pole-1", 1, thumb=image, location=here)
    pending = event("pole-1", 2, thumb=jpeg(6), location=here)
    messages = [
        ("vigil/pole-1/status", b'{"state":"online","node":"pole-1","agent":"0.1.0"}'),
        ("vigil/pole-1/events", dumps(shot)),
        (f"vigil/pole-1/thumbs/{shot['id']}", image),
        (f"vigil/pole-1/thumbs/{pending['id']}", jpeg(6)),  # arrived before its event: not shown yet
        ("vigil/pole-2/status", b'{"state":"offline","node":"pole-2"}'),
        (
            "vigil/pole-2/events",
            dumps(event("pole-2", 1, location={"lat": 52.3801, "lon": 4.9012, "mode": "3d"})),
        ),
        ("vigil/pole-3/status", b'{"state":"online","node":"pole-3"}'),
        (
            "vigil/pole-3/events",
            dumps(event("pole-3", 1, location={"lat": 52.3651, "lon": 4.8801, "mode": "static"})),
        ),
        ("vigil/pole-3/events", dumps(event("pole-3", 5, type="tamper", priority="critical"))),
        ("vigil/pole-3/events", b"not json"),
    ]
    import time

    now = time.time()
    writer.apply([(m := Incoming(t, p, now), parser.parse(m)) for t, p in messages], now)
    writer.sweep_gaps(0.0, now=now + 1)
    db.close()
    return {"thumb": shot["id"], "pending": pending["id"]}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[FleetWeb, dict[str, str]]]:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    ids = fill(url)
    web = FleetWeb(DbUrl.parse(url), "127.0.0.1:0").start()
    yield web, ids
    web.stop()


def get(web: FleetWeb, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{web.port}{path}", headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # the test looks at the redirect itself
        return None


def test_the_api_serves_the_fleet_from_the_database(site):
    web, ids = site
    status, headers, body = get(web, "/api/fleet.json")
    assert status == 200 and headers["Content-Security-Policy"].startswith("default-src 'self'")
    fleet = json.loads(body)
    nodes = {n["node"]: n for n in fleet["nodes"]}
    assert {k: nodes[k]["state"] for k in nodes} == {
        "pole-1": "online",
        "pole-2": "offline",
        "pole-3": "online",
    }
    assert fleet["states"] == {"online": 2, "silent": 0, "offline": 1, "unknown": 0}
    assert (fleet["open_gaps"], fleet["alarms"], fleet["quarantined"]) == (1, 1, {"not_json": 1})
    events = json.loads(get(web, "/api/events.json?limit=10")[2])["events"]
    by_id = {e["id"]: e for e in events}
    assert by_id[ids["thumb"]]["thumb"] == "ok"
    status, headers, jpeg_bytes = get(web, f"/thumbs/{ids['thumb']}.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and jpeg_bytes == jpeg(5)
    assert get(web, f"/thumbs/{ids['pending']}.jpg")[0] == 404  # unchecked until its event arrives
    assert get(web, "/thumbs/../../etc/passwd.jpg")[0] == 404
    detail = json.loads(get(web, "/api/node/pole-3.json")[2])
    assert detail["gaps"][0]["from"] == 2 and detail["gaps"][0]["to"] == 4 and detail["gaps"][0]["alarm"]
    assert detail["alarms"][0]["kind"] == "gap"
    assert get(web, "/api/node/nobody.json")[0] == 404
    assert get(web, "/api/node/..%2Fx.json")[0] == 404


def test_the_map_places_nodes_by_state_with_a_scale_bar(site):
    web, _ = site
    status, headers, body = get(web, "/map.svg")
    assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
    root = ET.fromstring(body)
    nodes = {a.get("data-node"): a for a in root.iter(f"{SVG}a")}
    assert set(nodes) == {"pole-1", "pole-2", "pole-3"}
    assert "state-offline" in nodes["pole-2"].get("class")
    assert nodes["pole-3"].find(f"{SVG}circle[@class='map-alarm']") is not None  # the gap alarm, ringed
    assert nodes["pole-1"].find(f"{SVG}circle[@class='map-alarm']") is None
    dots = {n: nodes[n].find(f"{SVG}circle[@class='map-dot']") for n in nodes}
    x = {n: float(c.get("cx")) for n, c in dots.items()}
    y = {n: float(c.get("cy")) for n, c in dots.items()}
    assert (
        x["pole-3"] < x["pole-1"] < x["pole-2"] and y["pole-2"] < y["pole-1"] < y["pole-3"]
    )  # west→east, north up
    scale = root.find(f".//{SVG}g[@class='map-scale']")
    metres, px = float(scale.get("data-metres")), float(scale.get("data-px"))
    # pole-2 and pole-3 are 2.17 km apart (haversine); the map must say the same through its scale
    apart_px = ((x["pole-2"] - x["pole-3"]) ** 2 + (y["pole-2"] - y["pole-3"]) ** 2) ** 0.5
    assert apart_px * metres / px == pytest.approx(2170, rel=0.03)


def test_map_projection_and_scale():
    assert svgmap.world_px(0.0, 0.0, 0) == pytest.approx((128.0, 128.0))
    assert svgmap.world_px(85.05112878, 180.0, 1) == pytest.approx((512.0, 0.0), abs=1e-6)
    assert (
        svgmap.nice_length(730) == 500 and svgmap.nice_length(2400) == 2000 and svgmap.nice_length(99) == 50
    )
    assert svgmap.distance_label(2000) == "2 km" and svgmap.distance_label(500) == "500 m"
    one = [svgmap.MapPoint("a", 52.37, 4.89, "online")]
    assert svgmap.fit_zoom(one, 960, 540, 40) == svgmap.SINGLE_NODE_ZOOM
    spread = [svgmap.MapPoint("a", 52.0, 4.0, "online"), svgmap.MapPoint("b", 53.0, 6.0, "online")]
    zoom = svgmap.fit_zoom(spread, 960, 540, 40)
    a, b = (svgmap.world_px(p.lat, p.lon, zoom) for p in spread)
    assert abs(a[0] - b[0]) <= 880 and abs(a[1] - b[1]) <= 460
    c, d = (svgmap.world_px(p.lat, p.lon, zoom + 1) for p in spread)
    assert abs(c[0] - d[0]) > 880 or abs(c[1] - d[1]) > 460  # the largest zoom that fits
    label = svgmap.render([svgmap.MapPoint("a", 52.0, 4.0, "online", label='<script>"&')])
    assert "<script>" not in label and '&lt;script&gt;"&amp;' in label
    tiled = svgmap.render(spread, tiles="https://tiles.example/{z}/{x}/{y}.png", attribution="© OSM")
    assert f"https://tiles.example/{zoom}/" in tiled and "© OSM" in tiled
    assert "No node has a position yet" in svgmap.render([])


def test_metrics_for_prometheus(site):
    web, _ = site
    status, headers, body = get(web, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    for line in (
        'vigil_fleet_nodes{state="online"} 2.0',
        'vigil_fleet_nodes{state="offline"} 1.0',
        'vigil_fleet_node_online{node="pole-2"} 0.0',
        'vigil_fleet_node_open_gaps{node="pole-3"} 1.0',
        'vigil_fleet_node_missing_events{node="pole-3"} 3.0',
        'vigil_fleet_node_alarms{node="pole-3"} 1.0',
        'vigil_fleet_node_events_total{node="pole-3"} 2.0',
        'vigil_fleet_quarantined_total{reason="not_json"} 1.0',
        'vigil_fleet_thumbnails{state="ok"} 1.0',
    ):
        assert line in text, line
    assert 'vigil_fleet_node_events_per_second{node="pole-1"}' in text


def test_access_rules_like_the_nodes_page(tmp_path: Path):
    url = DbUrl.parse(f"sqlite:///{tmp_path / 'fleet.db'}")
    fill(url.display())
    with pytest.raises(FleetError, match="reachable from other machines"):
        FleetWeb(url, "0.0.0.0:0")
    with pytest.raises(FleetError, match="at least 16"):
        FleetWeb(url, "127.0.0.1:0", token="short")
    web = FleetWeb(url, "127.0.0.1:0", token=TOKEN).start()
    try:
        status, _, body = get(web, "/")
        assert status == 401 and b"Token required" in body
        assert get(web, "/api/fleet.json")[0] == 401
        assert get(web, "/metrics", {"Authorization": "Bearer wrong-token-xxxxxxxx"})[0] == 401
        assert get(web, "/metrics", {"X-Vigil-Token": TOKEN})[0] == 200
        assert get(web, "/api/fleet.json", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, headers, _ = get(web, f"/?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/"
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(web, "/api/fleet.json", {"Cookie": cookie})[0] == 200
        request = urllib.request.Request(
            f"http://127.0.0.1:{web.port}/api/fleet.json",
            data=b"x",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405
        assert web.app.unauthorized == 3
    finally:
        web.stop()
    res = fleet_cli("serve", "--db", url.display(), "--http", "0.0.0.0:0")
    assert res.returncode == 1 and "--token-file" in res.stderr and "Traceback" not in res.stderr
