"""The operators' page in a real headless Chromium (Debian `chromium` + `chromium-driver`) against a live
fleet: real agents (`agent --simulate`) publishing to a real Mosquitto, `vigil-fleet ingest` storing,
`vigil-fleet serve`'s site serving. The map shows the nodes where they stand, coloured by state, the
latest events show their thumbnails, the drill-down shows a node's gaps and alarms, and a page served
with a token refuses the browser until it opens the link once. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jsonschema", reason="the back office needs the fleet extra (jsonschema)")

from fleet.store.db import DbUrl
from fleet.web.service import FleetWeb
from tests.brokers import Mosquitto
from tests.fleet_support import (
    ROOT,
    Publisher,
    agent_env,
    dumps,
    event,
    events_received,
    kill9,
    start_ingest,
    wait_for,
)
from tests.test_web_browser import ARTIFACTS, CHROME_ARGS, CHROMIUM, WebDriver, chromium

TOKEN = "control-room-token-2026"
LIVE = ("pole-live", 52.3731, 4.8922)
DONE = ("pole-done", 52.3801, 4.9012)


class DesktopDriver(WebDriver):
    """The W3C client of the node page's test, on a control-room screen instead of a phone."""

    def __init__(self, port: int, profile: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": str(CHROMIUM),
                "args": [*CHROME_ARGS, f"--user-data-dir={profile}", "--window-size=1400,1000"],
            },
        }
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[DesktopDriver]:
    with chromium(tmp_path, DesktopDriver) as driver:
        yield driver


def simulate(
    broker: str, node: tuple[str, float, float], state: Path, *extra: str
) -> subprocess.Popen[bytes]:
    name, lat, lon = node
    env = agent_env(VIGIL_NODE__LOCATION__LAT=str(lat), VIGIL_NODE__LOCATION__LON=str(lon))
    state.mkdir(parents=True)
    with (state / "agent.log").open("ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--simulate",
                "--source",
                "synthetic:3",
                "--broker",
                broker,
                "--node-id",
                name,
                "--state-dir",
                str(state),
                "--http",
                "off",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
            env=env,
            preexec_fn=lambda: os.nice(10),  # yield to the tests beside it on a shared machine
        )


@pytest.fixture
def live_fleet(tmp_path: Path) -> Iterator[str]:
    """A broker, the ingest and three nodes: one running, one that finished, one with a lost event."""
    broker = Mosquitto(tmp_path / "broker", extra="max_queued_messages 100000\n").start()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    ingest = start_ingest(
        "--broker",
        broker.url,
        "--db",
        db,
        "--client-id",
        "ingest",
        "--gap-alarm-after",
        "1s",
        log=tmp_path / "ingest.log",
    )
    agents: list[subprocess.Popen[bytes]] = []
    try:
        wait_for(lambda: "ingest: connected" in (tmp_path / "ingest.log").read_text(), 30, "the ingest")
        agents.append(simulate(broker.url, LIVE, tmp_path / "live"))
        agents.append(simulate(broker.url, DONE, tmp_path / "done", "--no-realtime", "--max-frames", "150"))
        lost = Publisher(broker.url, "pole-gap")
        try:
            lost.publish("vigil/pole-gap/status", b'{"state":"online","node":"pole-gap"}', retain=True)
            here = {"lat": 52.3651, "lon": 4.8801, "mode": "static"}
            for seq in (1, 5):  # 2..4 never arrive
                lost.publish("vigil/pole-gap/events", dumps(event("pole-gap", seq, location=here)))
        finally:
            lost.close()
        agents[1].wait(120)
        wait_for(lambda: events_received(db).get("pole-live", 0) >= 3, 120, "events from the running node")
        yield db
    finally:
        for proc in [*agents, ingest]:
            kill9(proc)
        broker.stop()


def test_the_operators_page_shows_the_live_fleet(desktop: DesktopDriver, live_fleet: str):
    web = FleetWeb(DbUrl.parse(live_fleet), "127.0.0.1:0").start()
    try:
        desktop.get(web.url)
        desktop.wait("return Number(document.body.dataset.updated) > 0")
        state = (
            "return document.querySelector('#nodes tr[data-node=\"' + arguments[0] + '\"]')?.dataset.state"
        )
        desktop.wait(state + " === 'online'", 20, "pole-live")
        desktop.wait(state + " === 'offline'", 20, "pole-done")  # its last will / goodbye
        desktop.wait(
            "return document.querySelector('#nodes tr[data-node=\"pole-gap\"]')?.classList.contains('alarm')",
            20,
        )
        # the map: every node where it stands, coloured by state, the lost events ringed
        dot = "document.querySelector('#map a.map-node[data-node=\"' + arguments[0] + '\"]')"
        assert desktop.js(f"return {dot}.classList.contains('state-online')", "pole-live")
        assert desktop.js(f"return {dot}.classList.contains('state-offline')", "pole-done")
        assert desktop.js(f"return !!{dot}.querySelector('circle.map-alarm')", "pole-gap")
        assert not desktop.js(f"return !!{dot}.querySelector('circle.map-alarm')", "pole-live")
        placed = desktop.js(
            'const c = n => document.querySelector(`#map a[data-node="${n}"] circle.map-dot`).getBoundingClientRect();'
            "return [c('pole-live').x, c('pole-done').x, c('pole-gap').x, c('pole-live').y, c('pole-done').y]"
        )
        assert placed[2] < placed[0] < placed[1] and placed[4] < placed[3]  # west to east, north up
        assert desktop.js("return document.querySelector('#map .map-scale text').textContent").endswith(
            ("m", "km")
        )
        # the latest events with their thumbnails, as the nodes sent them
        desktop.wait(
            "return [...document.querySelectorAll('#events li.event img')]"
            ".some(i => i.complete && i.naturalWidth > 0)"
        )
        desktop.screenshot(ARTIFACTS / "fleet-page.png")
        # drill down into the node with lost events
        desktop.js(
            "document.querySelector('#map a.map-node[data-node=\"pole-gap\"]').dispatchEvent("
            "new MouseEvent('click', {bubbles: true}))"
        )
        desktop.wait("return document.getElementById('detail').dataset.node === 'pole-gap'")
        gaps = desktop.wait("return document.getElementById('detail-gaps').textContent")
        assert "seq 2–4 missing" in gaps and "ALARM" in gaps
        assert "gap" in desktop.js("return document.getElementById('detail-alarms').textContent")
        desktop.js("location.hash = '#node/pole-live'")
        desktop.wait("return document.getElementById('detail').dataset.node === 'pole-live'")
        desktop.wait(
            "return document.getElementById('detail-gaps').textContent.includes('every event arrived')"
        )
        desktop.wait("return document.querySelectorAll('#detail-events li').length > 0")
        desktop.screenshot(ARTIFACTS / "fleet-node.png")
        assert desktop.js("return document.getElementById('overview').hidden")
    finally:
        web.stop()


def test_a_page_with_a_token_refuses_the_browser_until_the_link_is_opened(
    desktop: DesktopDriver, tmp_path: Path
):
    from tests.test_fleet_web import fill

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    fill(url)
    web = FleetWeb(DbUrl.parse(url), "127.0.0.1:0", token=TOKEN).start()
    try:
        desktop.get(web.url)
        assert desktop.js("return document.title") == "Vigil fleet: token required"
        assert desktop.js("return fetch('/api/fleet.json').then(r => r.status)") == 401
        desktop.get(web.url + f"?token={TOKEN}")  # the link given to the control room, opened once
        desktop.wait("return location.search === '' && Number(document.body.dataset.updated) > 0")
        desktop.get(web.url)  # later visits need no token: the browser keeps it as a cookie
        desktop.wait("return document.querySelectorAll('#nodes tbody tr').length === 3")
        assert desktop.js("return fetch('/metrics').then(r => r.status)") == 200
    finally:
        web.stop()
