"""The HTTP producer (FastAPI): `create_api(settings)`; `trunkline api` serves it."""

from producers.api.app import create_api
from producers.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_api"]
