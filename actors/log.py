"""structlog set-up shared by every actor process: JSON lines on stderr.

Configured lazily and idempotently because multiprocess actor bases import actor modules
in fresh processes that never ran the facade's set-up. Level from TASK_INGRESS_LOG_LEVEL.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False
_level = logging.INFO


def configure(level: str | None = None) -> None:
    """Route structlog to JSON lines on stderr, filtered at `level` (default: env or info)."""
    global _configured, _level
    name = (level or os.environ.get("TASK_INGRESS_LOG_LEVEL", "info")).upper()
    _level = getattr(logging, name, logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        # sys.stderr looked up per logger, not captured once: whoever swaps it later (pytest's
        # capture, a daemon redirecting output) must not leave us writing to a closed file.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _configured = True


def _stderr_logger(*args: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def info_enabled() -> bool:
    """Whether info events are emitted: lets hot paths skip building events nobody sees."""
    if not _configured and not structlog.is_configured():
        configure()
    return _level <= logging.INFO


def get_logger(**bound: Any) -> Any:
    """A structlog logger with `bound` context; configures structlog on first use."""
    if not _configured and not structlog.is_configured():
        configure()
    # A lazy proxy, not .bind(): the configuration is looked up at each call, so tests'
    # capture_logs() and later level changes reach loggers actors created earlier.
    return structlog.get_logger(**bound)
