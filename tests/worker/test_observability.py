"""Unit tests for worker.observability's logging set-up."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from worker.observability import CELERY_TASK_LOGGERS, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {name: logging.getLogger(name).level for name in CELERY_TASK_LOGGERS})
    yield
    root.handlers, root.level = saved[0], saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_celery_task_lines_are_off_by_default_but_errors_pass() -> None:
    configure_logging({"TRUNKLINE_LOG_LEVEL": "INFO"})

    for name in CELERY_TASK_LOGGERS:
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.INFO)
        assert logger.isEnabledFor(logging.ERROR)
    assert logging.getLogger("worker.runner").isEnabledFor(logging.INFO)


def test_celery_task_lines_come_back_with_their_setting() -> None:
    configure_logging({"TRUNKLINE_LOG_LEVEL": "INFO", "TRUNKLINE_CELERY_LOG_LEVEL": "info"})

    assert all(logging.getLogger(name).isEnabledFor(logging.INFO)
               for name in CELERY_TASK_LOGGERS)


# Stands for a credential a failing frame holds in a local variable (a client's API secret).
SECRET_IN_SCOPE = "canary-secret-9c41e7"


def fail_holding_a_secret() -> None:
    api_secret = SECRET_IN_SCOPE
    raise RuntimeError(f"LiveKit refused the call ({len(api_secret)}-character secret)")


@pytest.mark.parametrize("source", ["stdlib", "structlog"])
def test_json_lines_carry_an_exceptions_traceback_as_text_without_locals(
    capsys: pytest.CaptureFixture[str], source: str,
) -> None:
    """Celery's `Unrecoverable error` (stdlib, exc_info) and our own `.exception()` lines
    keep the traceback, as text, and nothing of the frames' local variables."""
    configure_logging({"TRUNKLINE_LOG_LEVEL": "INFO"})

    try:
        fail_holding_a_secret()
    except RuntimeError:
        if source == "stdlib":
            logging.getLogger("celery.worker").critical("Unrecoverable error", exc_info=True)
        else:
            structlog.get_logger("worker.runner").exception("job failed")

    output = capsys.readouterr().err
    line = json.loads(output.strip().splitlines()[-1])
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "in fail_holding_a_secret" in line["exception"]
    assert line["exception"].endswith(
        "RuntimeError: LiveKit refused the call (20-character secret)")
    assert "exc_info" not in line
    assert SECRET_IN_SCOPE not in output


def test_console_tracebacks_leave_out_local_variables(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rich, installed for other tools, would print every frame's locals by default."""
    configure_logging({"TRUNKLINE_LOG_LEVEL": "INFO", "TRUNKLINE_LOG_FORMAT": "console"})

    try:
        fail_holding_a_secret()
    except RuntimeError:
        logging.getLogger("worker.runner").exception("job failed")

    output = capsys.readouterr().err
    assert SECRET_IN_SCOPE not in output
    assert "Traceback (most recent call last):" in output
    assert "RuntimeError: LiveKit refused the call" in output
