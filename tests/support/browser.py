"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium, for the
tests of pages a person uses: /docs and /ops.

Every request the browser makes is read back from Chromium's own network events (the
performance log), so a test can assert that a page loaded nothing from anywhere but the server.
As a safety net the browser is also kept off the network: every host name but loopback's
resolves to nothing and any other request goes to a proxy on a closed loopback port, so a page
that did reach for a CDN fails here, on loopback, instead of sending traffic outside.

Screenshots go to `test-output/screenshots/` at the repository root (git-ignored), or to
`TRUNKLINE_SCREENSHOT_DIR`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

REPO = Path(__file__).resolve().parents[2]
WINDOW = (1400, 1000)
# Schemes that never leave the browser.
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-extension", "devtools"}
T = TypeVar("T")


def screenshot_dir() -> Path:
    configured = os.environ.get("TRUNKLINE_SCREENSHOT_DIR")
    path = Path(configured) if configured else REPO / "test-output" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        # make test installs it (the Makefile's `test` target); a missing browser is a failure.
        pytest.fail(f"{program} is missing: apt-get install {package} (make test does)")
    return found


@dataclass
class Browser:
    driver: webdriver.Chrome
    screenshots: Path
    # Every URL the browser requested, in order, across pages (read from the performance log).
    requested: list[str] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def wait_for(self, condition: Callable[[webdriver.Chrome], T], what: str,
                 timeout: float = 60) -> T:
        """Wait until `condition(driver)` is truthy; fail the test, naming `what`, after
        `timeout` seconds. An element that vanished (the page was navigating or re-rendering
        while the condition read it) only means "not yet"."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                                 ignored_exceptions=(NoSuchElementException,
                                                     StaleElementReferenceException)).until(
                condition, message=what)
        except Exception as exc:  # selenium's TimeoutException, with the page for context
            pytest.fail(f"not within {timeout:g}s: {what} ({type(exc).__name__}); page:\n"
                        f"{self.driver.page_source[:3000]}")

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self) -> str:
        body: str = self.find("body").text
        return body

    def source(self) -> str:
        return self.driver.page_source

    def screenshot(self, name: str) -> Path:
        """The whole page (beyond the window) as `<name>.png`."""
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path = self.screenshots / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def requests(self) -> list[str]:
        """Every URL requested so far (the log is drained into `requested` on each call)."""
        for entry in self.driver.get_log("performance"):  # type: ignore[no-untyped-call]
            message: dict[str, Any] = json.loads(entry["message"])["message"]
            method = message.get("method", "")
            params = message.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requested.append(params["request"]["url"])
            elif method == "Network.webSocketCreated":
                self.requested.append(params["url"])
        return list(self.requested)

    def outside(self, origin: str) -> list[str]:
        """Requests that went (or tried to go) anywhere but `origin` (scheme://host:port)."""
        allowed = urlsplit(origin)
        return [url for url in self.requests()
                if urlsplit(url).scheme not in LOCAL_SCHEMES
                and (urlsplit(url).scheme, urlsplit(url).netloc)
                != (allowed.scheme, allowed.netloc)]

    def cookie(self, name: str) -> dict[str, Any] | None:
        cookie: dict[str, Any] | None = self.driver.get_cookie(name)
        return cookie


def _options(binary: str) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--metrics-recording-only",
        "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        # Nothing leaves loopback, whatever a page asks for (see the module's docstring).
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return options


@pytest.fixture(name="browser")
def browser_fixture(tmp_path: Path) -> Iterator[Browser]:
    """`browser`: a headless Chromium for one test (import this into the test module)."""
    with chromium(tmp_path / "chromedriver.log") as opened:
        yield opened


@contextlib.contextmanager
def chromium(log_path: Path | None = None) -> Iterator[Browser]:
    """A headless Chromium for one test (or module); quit when the block ends."""
    binary = _require("chromium", "chromium")
    driver_path = _require("chromedriver", "chromium-driver")
    service = Service(executable_path=driver_path,
                      log_output=str(log_path) if log_path else os.devnull)
    driver = webdriver.Chrome(options=_options(binary), service=service)
    driver.set_page_load_timeout(60)
    try:
        yield Browser(driver, screenshot_dir())
    finally:
        driver.quit()
