"""/docs in headless Chromium against a real `trunkline api`: Swagger UI renders every
operation of the OpenAPI schema, and the browser requested nothing but that server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.integration.apiserver import ApiServer, start_api
from tests.integration.conftest import Stack
from tests.support.browser import Browser, browser_fixture  # noqa: F401 - `browser`

pytestmark = [pytest.mark.integration]

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
def api(stack: Stack, tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(stack, tmp_path / "api.log")
    yield server
    server.stop()


def test_docs_render_every_route_from_the_server_alone(api: ApiServer, browser: Browser) -> None:
    spec = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    expected = sorted((method.upper(), path) for path, operations in spec["paths"].items()
                      for method in operations if method in METHODS)
    assert len(expected) >= 8  # the API's routes, so a page showing none cannot pass

    browser.open(f"{api.url}/docs")
    browser.wait_for(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock"))
                     >= len(expected), f"Swagger UI shows {len(expected)} operations")
    shown = sorted(
        (block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip(),
         block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
             "data-path") or "")
        for block in browser.find_all(".opblock"))
    browser.screenshot("docs")

    assert shown == expected
    assert "Trunkline" in browser.find(".info .title").text
    requested = browser.requests()
    assert f"{api.url}/docs-assets/swagger-ui-bundle.js" in requested
    assert f"{api.url}/openapi.json" in requested
    assert browser.outside(api.url) == []
