"""task-ingress: the controlled write path from an AGH peer network into a task domain.

Everything installs under this one name: `task_ingress.messages` (models, wire codec),
`task_ingress.actors` (the pipeline), `task_ingress.runtime` (the embedding facade, the
daemon and the CLI) and `task_ingress.bench`. In the repository those folders sit at the top
(`actors/`, `messages/`, `runtime/`, `bench/`); `pyproject.toml` maps them here, so an
embedder's own `runtime` or `messages` package can never shadow ours.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("task-ingress")
except PackageNotFoundError:  # running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
