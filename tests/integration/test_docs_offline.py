"""/docs in headless Chromium against a real `trunkline api`: Swagger UI renders every
operation of the OpenAPI schema, and the browser requested nothing but that server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

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


def operations(driver: WebDriver) -> list[tuple[str, str]]:
    """(METHOD, path) of each operation Swagger UI shows, sorted."""
    return sorted(
        (block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.strip(),
         block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute(
             "data-path") or "")
        for block in driver.find_elements(By.CSS_SELECTOR, ".opblock"))


def test_docs_render_every_route_from_the_server_alone(api: ApiServer, browser: Browser) -> None:
    spec = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    expected = sorted((method.upper(), path) for path, methods in spec["paths"].items()
                      for method in methods if method in METHODS)
    assert len(expected) >= 8  # the API's routes, so a page showing none cannot pass

    browser.open(f"{api.url}/docs")
    browser.wait_for(lambda driver: operations(driver) == expected,
                     f"Swagger UI shows the schema's {len(expected)} operations")
    browser.screenshot("docs")

    assert operations(browser.driver) == expected
    assert "Trunkline" in browser.find(".info .title").text
    requested = browser.requests()
    assert f"{api.url}/docs-assets/swagger-ui-bundle.js" in requested
    assert f"{api.url}/openapi.json" in requested
    assert browser.outside(api.url) == []
