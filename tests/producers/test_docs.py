"""Unit tests for the API's offline docs (producers.api.docs) and what create_api serves
beside the API: /docs with its assets from the installed package, and /ops."""

from __future__ import annotations

import re

from producers.api.docs import ASSETS_PATH, assets_directory
from tests.producers.conftest import CREATE, Harness, seed


def test_docs_page_names_no_other_host(harness: Harness) -> None:
    """/docs loads Swagger UI, its styles and icon from this server: no URL names a host
    (nor a protocol-relative `//host`: every src and href is one of ours)."""
    page = harness.request("GET", "/docs", org=None)

    assert page.status == 200
    assert "://" not in page.text
    sources = set(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    assert sources == {f"{ASSETS_PATH}/swagger-ui-bundle.js", f"{ASSETS_PATH}/swagger-ui.css",
                       f"{ASSETS_PATH}/favicon.png"}
    assert "url: '/openapi.json'" in page.text
    assert '"validatorUrl": null' in page.text


def test_docs_assets_are_the_installed_packages_files(harness: Harness) -> None:
    """Each asset the page names is served whole from fastapi-offline's files."""
    for name, media in (("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css"),
                        ("favicon.png", "image/png")):
        answer = harness.request("GET", f"{ASSETS_PATH}/{name}", org=None)
        assert answer.status == 200
        assert media in answer.headers["content-type"]
        assert int(answer.headers["content-length"]) == (assets_directory() / name).stat(
        ).st_size


def test_redoc_is_not_served(harness: Harness) -> None:
    """ReDoc's bundle fetches its logo from a CDN, so there is no /redoc."""
    assert harness.request("GET", "/redoc", org=None).status == 404


def test_ops_page_is_served_and_not_in_the_schema(harness: Harness) -> None:
    """/ops answers (the login form), and no /ops route is part of the public API schema."""
    login = harness.request("GET", "/ops/login", org=None)
    spec = harness.request("GET", "/openapi.json", org=None).body

    assert login.status == 200 and 'name="key_id"' in login.text
    assert not [path for path in spec["paths"] if path.startswith(("/ops", "/docs"))]


def test_an_operator_key_is_refused_by_the_api(harness: Harness) -> None:
    """An operator key opens /ops only: the API answers it like a wrong key (401)."""
    operator = harness.keys.create_operator()

    answer = harness.request("POST", CREATE, json_body=seed(), org=None, headers={
        "X-API-KEY": operator.api_key, "X-API-SECRET": operator.api_secret})

    assert answer.status == 401
    assert answer.body["error"]["code"] == "invalid_credentials"
    assert harness.all_job_keys() == []
