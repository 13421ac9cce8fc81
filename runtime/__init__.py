"""The embedding surface: IngressRuntime and RuntimeConfig (SPEC §7)."""

from task_ingress.runtime.config import RuntimeConfig
from task_ingress.runtime.driver import RuntimeStatistics
from task_ingress.runtime.errors import IngressTimeout, RuntimeClosed, RuntimeStartError
from task_ingress.runtime.facade import IngressRuntime

__all__ = ["IngressRuntime", "IngressTimeout", "RuntimeClosed", "RuntimeConfig",
           "RuntimeStartError", "RuntimeStatistics"]
