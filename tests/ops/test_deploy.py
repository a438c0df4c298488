"""The deployment files: docker-compose.yml against the Compose Specification, and in step
with the README and the settings the code reads.

`compose-spec.json` is vendored from github.com/compose-spec/compose-spec (schema/
compose-spec.json at commit 170098ba07d9f53c383a41bfd4c5166b0a4529a6, Apache-2.0). No Docker
engine is needed.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from producers.api.settings import ApiSettings
from worker.config import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
EXAMPLE_ENV = REPO / "deploy" / "example.env"
TRUNKLINE_SERVICES = ("worker", "beat", "api")
# Read by code but not for deployments.
TEST_ONLY = {"TRUNKLINE_CHAOS_KILL_AT", "TRUNKLINE_CHAOS_MODE", "TRUNKLINE_CHAOS_DIR"}
# `env.get("X"`, `_int(env, "X"`, `os.environ["X"]`, `os.getenv("X"`: a setting read from the
# environment.
ENV_READ = re.compile(
    r"(?:\benv\b|environ|getenv)[^\"'\n]{0,20}[\"']((?:REDIS|LIVEKIT|TRUNKLINE)_[A-Z0-9_]+)[\"']")
# Read by the worker's main process only.
WORKER_ONLY = {"TRUNKLINE_METRICS_PORT"}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    # The schema names draft-07 by an address jsonschema does not know; use draft 7 itself.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def command(service: str) -> str:
    value = compose()["services"][service]["command"]
    return " ".join(value) if isinstance(value, list) else str(value)


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def env_names(path: Path) -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", path.read_text(), re.MULTILINE))


def test_compose_file_passes_the_compose_specification_schema() -> None:
    """docker-compose.yml is valid against the Compose Specification's JSON schema."""
    assert schema_errors(compose()) == []


def test_the_schema_check_catches_mistakes() -> None:
    """The same check refuses a misspelled key and a wrongly typed value."""
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["comand"] = ["celery"]
    broken["services"]["api"]["depends_on"] = "redis"
    errors = schema_errors(broken)
    assert any("comand" in e for e in errors), errors
    assert any(e.startswith("services/api/depends_on") for e in errors), errors


def test_compose_commands_are_the_readmes() -> None:
    """Worker, beat and API run exactly the commands the README documents."""
    rows = dict(re.findall(r"^\| `([a-z]+)` \| `([^`]+)` \|$", readme_section("Deployment"),
                           re.MULTILINE))
    for service in TRUNKLINE_SERVICES:
        assert command(service) == rows[service], service
    assert command("worker") == "celery -A worker worker --loglevel=INFO"
    assert command("beat") == "celery -A worker beat"
    assert command("api") == "trunkline api --host 0.0.0.0 --port 8000"
    running = readme_section("Running a worker")
    block = re.search(r"```sh\n(.+?)\n```", running, re.DOTALL)
    assert block is not None
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert command("worker") in lines
    assert command("redis") == rows["redis"]


def test_redis_keeps_every_write_and_never_evicts() -> None:
    """Redis runs with AOF and noeviction; livekit-server has its own database."""
    redis_command = command("redis")
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    livekit = yaml.safe_load((REPO / "deploy" / "livekit.yaml").read_text())
    assert livekit["redis"]["address"] == "redis:6379"
    trunkline_db = int(compose()["x-trunkline-environment"]["REDIS_URL"].rsplit("/", 1)[1]
                       .rstrip("}"))
    assert livekit["redis"]["db"] != trunkline_db
    assert "keys" not in livekit  # from LIVEKIT_KEYS in the environment, never a file
    services = compose()["services"]
    assert services["livekit"]["image"] == "livekit/livekit-server:v1.13.5"
    assert "LIVEKIT_KEYS" in services["livekit"]["environment"]
    assert compose()["configs"]["livekit"]["file"] == "./deploy/livekit.yaml"


def test_every_setting_reaches_the_trunkline_services() -> None:
    """Each variable the worker and API read is passed to the worker, beat and API."""
    read: set[str] = set()
    for source in sorted([*(REPO / "worker").rglob("*.py"), *(REPO / "producers").rglob("*.py")]):
        read |= set(ENV_READ.findall(source.read_text()))
    read -= TEST_ONLY
    assert {"REDIS_URL", "LIVEKIT_URL", "TRUNKLINE_SECRET_KEYS"} <= read
    for service in TRUNKLINE_SERVICES:
        environment = compose()["services"][service]["environment"]
        wanted = read if service == "worker" else read - WORKER_ONLY
        missing = wanted - set(environment)
        assert not missing, f"{service} does not get {sorted(missing)}: add them to " \
                            "x-trunkline-environment in docker-compose.yml and deploy/example.env"


def test_example_env_documents_every_variable() -> None:
    """Every variable the compose file interpolates is in deploy/example.env, with a comment."""
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    documented = env_names(EXAMPLE_ENV)
    assert used - documented == set()
    assert documented - used == set()
    lines = EXAMPLE_ENV.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            before = [x for x in lines[:index] if x.strip()]
            assert before and (before[-1].startswith("#") or re.match(r"^[A-Z_]+=", before[-1])
                               ), f"{line.split('=')[0]} has no comment"


@pytest.mark.parametrize("name", ["LIVEKIT_API_SECRET", "TRUNKLINE_SECRET_KEYS",
                                  "LIVEKIT_API_KEY"])
def test_example_env_ships_no_secret(name: str) -> None:
    """The example leaves every secret empty, and compose refuses to start without them."""
    assert re.search(rf"^{name}=$", EXAMPLE_ENV.read_text(), re.MULTILINE)
    assert f"${{{name}:?" in COMPOSE.read_text()


def test_dockerfile_runs_the_project_unprivileged() -> None:
    """The image holds the three packages and runs as a non-root user."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "FROM python:3.11" in dockerfile
    for package in ("worker", "producers", "ops"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert re.search(r"^USER trunkline$", dockerfile, re.MULTILINE)
    for service in TRUNKLINE_SERVICES:
        assert compose()["services"][service]["build"]["context"] == "."


# Defaults the deployment sets on purpose: container addresses, the worker's metrics port.
DEPLOYMENT_DEFAULTS = {"REDIS_URL", "LIVEKIT_URL", "TRUNKLINE_METRICS_PORT"}


def compose_defaults() -> dict[str, str]:
    return dict(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}", COMPOSE.read_text()))


def test_compose_defaults_are_the_codes_defaults() -> None:
    """A default in the compose file changes nothing the code would not do without it."""
    for name, value in compose_defaults().items():
        if name in DEPLOYMENT_DEFAULTS:
            continue
        assert Settings.from_env({name: value}) == Settings.from_env({}), name
        assert ApiSettings.from_env({name: value}) == ApiSettings.from_env({}), name


def test_example_env_values_are_the_compose_defaults() -> None:
    """deploy/example.env shows each variable with the value compose uses when it is unset."""
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", EXAMPLE_ENV.read_text(), re.MULTILINE))
    for name, default in compose_defaults().items():
        assert values[name] == default, name
