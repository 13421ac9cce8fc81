"""structlog set-up shared by every actor process: one line per event on stderr.

Configured lazily and idempotently because multiprocess actor bases import actor modules
in fresh processes that never ran the facade's set-up. An embedder that configured
structlog itself keeps its configuration: we only configure when nobody has.

Level: TASK_INGRESS_LOG_LEVEL (`debug`, `info`, `warning`, `error`; default `warning`:
every outcome is in the audit log, so a library stays quiet unless asked). Format:
TASK_INGRESS_LOG_FORMAT (`json` or `console`; default: `console` when stderr is a
terminal, JSON lines otherwise, so log shippers get JSON and people get text).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")
"""The levels TASK_INGRESS_LOG_LEVEL and `--log-level` accept."""
FORMATS = ("json", "console")
"""The formats TASK_INGRESS_LOG_FORMAT and `--log-format` accept."""
DEFAULT_LEVEL = "warning"
LEVEL_ENV = "TASK_INGRESS_LOG_LEVEL"
FORMAT_ENV = "TASK_INGRESS_LOG_FORMAT"

_configured = False
_level = logging.WARNING


def resolve_level(level: str | None = None) -> str:
    """The level to use: `level`, else the environment, else `warning` (unknown: warning)."""
    name = (level or os.environ.get(LEVEL_ENV) or DEFAULT_LEVEL).strip().lower()
    return name if name in LEVELS else DEFAULT_LEVEL


def resolve_format(fmt: str | None = None) -> str:
    """The format to use: `fmt`, else the environment, else by whether stderr is a tty."""
    name = (fmt or os.environ.get(FORMAT_ENV) or "").strip().lower()
    if name in FORMATS:
        return name
    return "console" if _stderr_is_tty() else "json"


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Route structlog to stderr at `level` in `fmt` (defaults: module docstring)."""
    global _configured, _level
    _level = getattr(logging, resolve_level(level).upper())
    renderer: Any
    if resolve_format(fmt) == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=_stderr_is_tty(), pad_event_to=24)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
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
    if not _configured:
        if structlog.is_configured():
            return True  # the embedder's configuration decides what it keeps
        configure()
    return _level <= logging.INFO


def get_logger(**bound: Any) -> Any:
    """A structlog logger with `bound` context; configures structlog on first use."""
    if not _configured and not structlog.is_configured():
        configure()
    # A lazy proxy, not .bind(): the configuration is looked up at each call, so tests'
    # capture_logs() and later level changes reach loggers actors created earlier.
    return structlog.get_logger(**bound)
