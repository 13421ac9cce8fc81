"""The `task-ingress` console script (SPEC §9). Each command lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="task-ingress: the race-free gate for network peers' task writes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def root() -> None:
    """task-ingress: the race-free gate for network peers' task writes."""


@app.command()
def demo(
    store: str = typer.Option(":memory:", help="SQLite store path (':memory:' = throwaway)."),
) -> None:
    """Scripted walkthrough: every action and rejection path, then the audit tail."""
    from task_ingress.runtime.demo import run_demo

    raise typer.Exit(run_demo(store))


# --- command registrations (one line per command module) ---
from task_ingress.runtime.audit_cli import audit_app  # noqa: E402  (registrations live together here)

app.add_typer(audit_app, name="audit")
from task_ingress.runtime.swarm.cli import swarm_command  # noqa: E402

app.command("swarm")(swarm_command)
from task_ingress.bench.cli import bench_command  # noqa: E402

app.command("bench")(bench_command)
from task_ingress.runtime.nats.cli import serve  # noqa: E402  (cheap: imports typer only)

app.command(name="serve")(serve)
from task_ingress.runtime.nats.client_cli import (  # noqa: E402  (cheap: typer only)
    keygen,
    request_app,
    trust_app,
)

app.command(name="keygen")(keygen)
app.add_typer(trust_app, name="trust")
app.add_typer(request_app, name="request")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
