"""`task-ingress serve --cluster` with the `Delay` store proxy in every shard runtime (a test
seam: admitted writes wait 0.3 s before the store), for the SIGSTOP fencing test."""

from __future__ import annotations

import dataclasses
from typing import Any

from task_ingress.runtime.cli import main
from task_ingress.runtime.cluster import serve
from task_ingress.testing import DELAY

_original = serve.shard_runtime_config


def _delayed(*args: Any, **kwargs: Any) -> Any:
    return dataclasses.replace(_original(*args, **kwargs), store_proxy_class=DELAY)


if __name__ == "__main__":
    serve.shard_runtime_config = _delayed
    main()
