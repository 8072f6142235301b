"""The status page in a real headless Chromium (Debian `chromium` + `chromium-driver`), driven over the
W3C WebDriver protocol by a small client below, on a phone-sized screen: it loads, the preview keeps
updating, the latest events show with their thumbnails, and an exposed node refuses the browser until
it opens the link with the token once. A screenshot is kept in test-artifacts/."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.agent_harness import AgentHarness
from tests.brokers import free_port, wait_port
from tests.conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
D = TypeVar("D", bound="WebDriver")
TOKEN = "pole-17-technician-token"
CHROME_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


class WebDriver:
    """Just enough of W3C WebDriver: navigate, run a script, take a screenshot."""

    def __init__(self, port: int, profile: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.base = f"http://127.0.0.1:{port}"
        caps = {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": str(CHROMIUM),
                "args": [*CHROME_ARGS, f"--user-data-dir={profile}", *extra_args],
                # a mid-range phone held upright
                "mobileEmulation": {"deviceMetrics": {"width": 412, "height": 915, "pixelRatio": 2.0}},
            },
        }
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as res:
                return json.loads(res.read())["value"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from None

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 20.0, *args: Any) -> Any:
        """Poll a script in the page until it returns something truthy (the page is our condition)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.js(script, *args)
            if value:
                return value
            time.sleep(0.2)  # polling the browser, which has no way to call us back
        raise AssertionError(f"page condition not met within {timeout}s: {script} (last: {value!r})")

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (RuntimeError, OSError):
            pass


@contextlib.contextmanager
def chromium(tmp_path: Path, make: Callable[[int, Path], D]) -> Iterator[D]:
    """A chromedriver on a free port and the driver `make(port, profile)` builds on it; skips the
    test when Chromium is not installed."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("chromium and chromium-driver are not installed (./scripts/setup installs the Debian packages)")
    port = free_port()
    with (tmp_path / "chromedriver.log").open("ab") as log:
        proc = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"], stdout=log, stderr=log)
    try:
        wait_port(port, proc=proc)
        driver = make(port, tmp_path / "profile")
        yield driver
        driver.quit()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path, WebDriver) as driver:
        yield driver


def frames_shown(driver: WebDriver) -> int:
    return int(driver.js("return Number(document.getElementById('preview').dataset.frames || 0)"))


def check(driver: WebDriver, condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)  # polling the browser
    raise AssertionError(what)


def test_status_page_on_a_phone(browser, tmp_path):
    config = {"rules": {"zones": [{"name": "crossing", "polygon": [[0.05, 0.75], [0.95, 0.75], [0.95, 0.98],
                                                                   [0.05, 0.98]]}]},
              "privacy": {"masks": [{"name": "flat 2", "polygon": [[0.7, 0.0], [1.0, 0.0], [1.0, 0.3], [0.7, 0.3]]}]}}
    with AgentHarness(tmp_path / "state", config=config) as node:
        assert node.wait_records(lambda rs: sum(bool(r.get("thumb")) for r in rs) >= 2, 30)
        browser.get(node.stage("web").url)
        browser.wait("return document.getElementById('health').textContent === 'ok'")
        # the preview keeps updating: successive frames replace each other
        first = browser.wait("const i = document.getElementById('preview');"
                             "return i.complete && i.naturalWidth > 0 && Number(i.dataset.seq)")
        check(browser, lambda: frames_shown(browser) >= 4, "the preview stopped updating")
        assert int(browser.js("return Number(document.getElementById('preview').dataset.seq)")) > first
        assert browser.js("return document.getElementById('preview').naturalWidth") == 640
        # the latest events, with their (redacted) thumbnails loaded
        browser.wait("return [...document.querySelectorAll('#events li.event img')]"
                     ".some(i => i.complete && i.naturalWidth > 0)")
        texts = browser.js("return [...document.querySelectorAll('#events li.event .what')].map(e => e.textContent)")
        assert any("object appeared" in t for t in texts), texts
        # real values, not the placeholders: a rate needs two samples, so a page opened in the agent's
        # first half second shows "–" once; the next poll (2 s) must bring the measured numbers
        browser.wait("return /[0-9] fps/.test(document.querySelector('[data-k=\"camera-sub\"]').textContent)"
                     " && /^[0-9.]+ runs/.test(document.querySelector('[data-k=\"detect\"]').textContent)", 10)
        tiles = browser.js("return Object.fromEntries([...document.querySelectorAll('[data-k]')]"
                           ".map(e => [e.dataset.k, e.textContent]))")
        assert tiles["camera"] == "streaming" and "fps" in tiles["camera-sub"]
        # what the tiles say is what /status.json says
        status = browser.js("return fetch('/status.json').then(r => r.json())")
        shown_fps = re.search(r"· ([0-9.]+) fps", tiles["camera-sub"])
        assert shown_fps and float(shown_fps.group(1)) > 0, tiles["camera-sub"]
        live_fps = status["pipeline"]["fps"]["capture"]  # a moment later: close, not equal
        assert abs(float(shown_fps.group(1)) - live_fps) <= max(3.0, live_fps / 2), (tiles, status["pipeline"])
        runs = re.fullmatch(r"([0-9.]+) runs/s", tiles["detect"])
        assert runs and float(runs.group(1)) > 0, tiles["detect"]
        assert tiles["detect-sub"].startswith(status["versions"]["model"]) and "ms p50/p95" in tiles["detect-sub"]
        assert status["versions"]["model"] and "–" not in tiles["detect-sub"].split(" · ")[1], tiles["detect-sub"]
        assert tiles["link"] == "no broker" and "waiting" in tiles["spool"]
        # made for a phone: nothing wider than the screen, tap targets at least 48 px
        assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth")
        sizes = browser.js("return [...document.querySelectorAll('button')].map(b => b.getBoundingClientRect().height)")
        assert sizes and min(sizes) >= 48
        browser.js("document.getElementById('pause').click()")
        paused_at = frames_shown(browser)
        assert browser.js("return document.getElementById('pause').textContent") == "Resume"
        browser.screenshot(ARTIFACTS / "status-page-phone.png")
        assert frames_shown(browser) <= paused_at + 1  # at most the request already in flight


def test_exposed_page_refuses_the_browser_without_the_token(browser, tmp_path):
    config = {"http": {"listen": "0.0.0.0:0", "token": TOKEN}}
    with AgentHarness(tmp_path / "state", config=config) as node:
        port = node.stage("web").address[1]
        base = f"http://127.0.0.1:{port}/"
        browser.get(base)
        assert browser.js("return document.title") == "Vigil: token required"
        denied = browser.js("return fetch('/status.json').then(r => r.status)")
        assert denied == 401
        browser.get(base + f"?token={TOKEN}")  # the link given to the technician, opened once
        browser.wait("return location.search === '' && document.getElementById('node').textContent === 'node-1'")
        check(browser, lambda: frames_shown(browser) >= 2, "no preview after opening the token link")
        browser.get(base)  # later visits need no token: the browser keeps it as a cookie
        browser.wait("return document.getElementById('health').textContent === 'ok'")
        assert browser.js("return fetch('/status.json').then(r => r.status)") == 200
        browser.screenshot(ARTIFACTS / "status-page-token.png")
