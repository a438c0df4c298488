"""API docs that work offline: Swagger UI at `/docs`, its script, styles and icon served by
the API itself from the installed `fastapi-offline` package.

FastAPI's own pages load Swagger UI from a CDN, which is a blank page on a private network or
an air-gapped host; this page names no other host. `create_api` turns FastAPI's pages off
(`docs_url=None, redoc_url=None`) and calls `install_offline_docs`. There is no `/redoc`:
ReDoc's bundle loads its logo from Redocly's CDN whatever it is told.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
# Swagger UI's default would send the schema to validator.swagger.io for a badge.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def assets_directory() -> Path:
    """Where `fastapi-offline` keeps Swagger UI's files."""
    return Path(str(files("fastapi_offline") / "static"))


def install_offline_docs(app: FastAPI, *, title: str) -> None:
    """Serve `/docs` and its assets (under `/docs-assets`) from this process."""
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_directory()), name="docs-assets")

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
