"""The embedding surface: IngressRuntime and RuntimeConfig (SPEC §7)."""

from runtime.config import RuntimeConfig
from runtime.errors import IngressTimeout, RuntimeClosed, RuntimeStartError
from runtime.facade import IngressRuntime

__all__ = ["IngressRuntime", "IngressTimeout", "RuntimeClosed", "RuntimeConfig",
           "RuntimeStartError"]
