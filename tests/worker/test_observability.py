"""Unit tests for worker.observability's logging set-up."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

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
