"""`task-ingress trust add|remove|list --database URL`: the cluster's policy table.

Called by the trust commands (runtime/client_cli.py) once they have parsed handles and
keys as for a policy file; psycopg (the `cluster` extra) is imported here, when such a
command runs. A database that cannot be reached is a usage problem (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from task_ingress.runtime.cli_exit import UsageProblem, one_line

T = TypeVar("T")


@contextmanager
def _connected(url: str) -> Iterator[Any]:
    try:
        import psycopg
    except ImportError:
        raise UsageProblem("--database needs psycopg: pip install 'task-ingress[cluster]'"
                           ) from None
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            yield conn
    except psycopg.Error as exc:
        raise UsageProblem(f"cannot use the cluster database: {one_line(str(exc), 300)}"
                           ) from None


def _run(url: str, work: Callable[[Any], T]) -> T:
    with _connected(url) as conn:
        try:
            return work(conn)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None


def allow(url: str, handles: list[str], keys: list[bytes]) -> set[str]:
    """Add the handles (with these keys); returns the fingerprints enrolled with a key."""
    from task_ingress.runtime.cluster import pg_trust

    def work(conn: Any) -> set[str]:
        pg_trust.allow(conn, handles, keys)
        return set(pg_trust.read_policy(conn)[1])

    return _run(url, work)


def disallow(url: str, handles: list[str]) -> list[str]:
    """Remove the handles; returns those that were there."""
    from task_ingress.runtime.cluster import pg_trust

    return _run(url, lambda conn: pg_trust.disallow(conn, handles))


def listed(url: str) -> list[str]:
    """The handles in the cluster's policy, sorted."""
    from task_ingress.runtime.cluster import pg_trust

    return _run(url, pg_trust.listed)
