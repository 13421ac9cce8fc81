"""The `task-ingress` console script (SPEC §9). Each command lives in its own module."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer
from task_ingress.actors import log
from task_ingress.runtime.cli_exit import run

app = typer.Typer(
    help=("task-ingress: the race-free gate for network peers' task writes. "
          "Exit status: 0 ok, 1 the checked thing failed, 2 usage error or could not "
          "start, 130 interrupted."),
    no_args_is_help=True,
    add_completion=False,
    # Plain help: no rich boxes (they cut lines at 80 columns) and no `<bool>` on flags.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from task_ingress import __version__

        typer.echo(f"task-ingress {__version__}")
        raise typer.Exit()


def _choice(option: str, env: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    """`value` (or the environment's) checked against `allowed`; None when neither is set."""
    given = value if value is not None else os.environ.get(env)
    if given is None or given == "":
        return None
    if given.strip().lower() not in allowed:
        source = option if value is not None else f"environment variable {env}"
        raise typer.BadParameter(f"{given!r} is not one of {', '.join(allowed)}",
                                 param_hint=source)
    return given.strip().lower()


@app.callback()
def root(
    log_level: str | None = typer.Option(
        None, "--log-level", metavar="LEVEL",
        help=f"Log level on stderr: {', '.join(log.LEVELS)} (env {log.LEVEL_ENV}; default "
             f"{log.DEFAULT_LEVEL}; info logs every outcome)."),
    log_format: str | None = typer.Option(
        None, "--log-format", metavar="FORMAT",
        help=f"Log lines as json or console (env {log.FORMAT_ENV}; default: console on a "
             "terminal, json otherwise)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """task-ingress: the race-free gate for network peers' task writes."""
    level = _choice("--log-level", log.LEVEL_ENV, log_level, log.LEVELS)
    fmt = _choice("--log-format", log.FORMAT_ENV, log_format, log.FORMATS)
    # Through the environment, so actor processes of multiprocess bases log the same way.
    if level:
        os.environ[log.LEVEL_ENV] = level
    os.environ[log.FORMAT_ENV] = fmt or log.resolve_format()
    log.configure()


@app.command()
def demo(
    store: str = typer.Option(":memory:", help="SQLite store path (':memory:' = a temp "
                              "file, removed afterwards)."),
) -> None:
    """Scripted walkthrough: every outcome (each reason code and a replay), then the audit
    tail."""
    from task_ingress.runtime.demo import run_demo
    from task_ingress.runtime.preflight import check_store_writable

    if store != ":memory:":
        check_store_writable(store)
    raise typer.Exit(run_demo(store))


# --- command registrations (one line per command module) ---
from task_ingress.runtime.audit.cli import audit_app  # noqa: E402  (registrations live together)

app.add_typer(audit_app, name="audit")
from task_ingress.runtime.swarm.cli import swarm_command  # noqa: E402

app.command("swarm")(swarm_command)
from task_ingress.bench.cli import bench_command  # noqa: E402

app.command("bench")(bench_command)
from task_ingress.runtime.serve_cli import serve  # noqa: E402  (cheap: imports typer only)

app.command(name="serve")(serve)
from task_ingress.runtime.client_cli import (  # noqa: E402  (cheap: typer only)
    keygen,
    request_app,
    trust_app,
)

app.command(name="keygen")(keygen)
app.add_typer(trust_app, name="trust")
app.add_typer(request_app, name="request")
from task_ingress.runtime.cluster.cli import cluster_app  # noqa: E402  (typer only)

app.add_typer(cluster_app, name="cluster")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: exits with the status of runtime.cli_exit's rules."""
    sys.exit(run(app, argv))


if __name__ == "__main__":
    main()
