"""The embedding surface: IngressRuntime and RuntimeConfig (SPEC §7).

`IngressRuntime` is loaded on first use: importing a sibling such as `runtime.audit` (the
read-only tools, which run beside a live daemon) must not start importing the actor
pipeline through this package.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.errors import (
    IngressTimeout,
    PresenceRefused,
    RuntimeClosed,
    RuntimeStartError,
)

if TYPE_CHECKING:
    from task_ingress.runtime.driver import RuntimeStatistics
    from task_ingress.runtime.facade import IngressRuntime

__all__ = ["IngressRuntime", "IngressTimeout", "PresenceRefused", "RuntimeClosed",
           "RuntimeConfig", "RuntimeStartError", "RuntimeStatistics"]


def __getattr__(name: str) -> Any:
    if name == "IngressRuntime":
        return import_module("task_ingress.runtime.facade").IngressRuntime
    if name == "RuntimeStatistics":
        return import_module("task_ingress.runtime.driver").RuntimeStatistics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
