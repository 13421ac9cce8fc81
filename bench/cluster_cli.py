"""`task-ingress bench --cluster`: the cluster bench (bench/cluster.py) from the command line,
its options checked as the other commands check theirs (a usage problem exits 2)."""

from __future__ import annotations

from task_ingress.bench.cluster import MAX_SECONDS, daemon_counts, run_cluster_bench


def cluster_bench(database: str | None, daemons: str, seconds: float, senders: int,
                  json_path: str | None) -> None:
    """Run the cluster bench for each daemon count in `daemons` against the PostgreSQL
    server of `database` (a fresh database per count); raise UsageProblem for bad input."""
    from task_ingress.runtime.cli_exit import UsageProblem
    from task_ingress.runtime.preflight import check_writable

    if not database:
        raise UsageProblem("--cluster needs --database URL (or TASK_INGRESS_DATABASE): a "
                           "PostgreSQL server where this user may CREATE DATABASE")
    try:
        counts = daemon_counts(daemons)
    except ValueError as exc:
        raise UsageProblem(f"--daemons: {exc}") from None
    if not 0 < seconds <= MAX_SECONDS:
        raise UsageProblem(f"--seconds must be above 0 and at most {MAX_SECONDS:g}")
    if senders < 1:
        raise UsageProblem("--threads must be at least 1")
    if json_path:
        check_writable(json_path, "--json")
    try:
        import psycopg
    except ImportError:
        raise UsageProblem("--cluster needs psycopg: pip install 'task-ingress[cluster]'"
                           ) from None
    try:
        psycopg.connect(database, autocommit=True, connect_timeout=5).close()
    except psycopg.Error as exc:
        raise UsageProblem(f"--database: cannot connect: {str(exc).strip()[:200]}") from None
    run_cluster_bench(database, counts, seconds=seconds, senders=senders,
                      json_path=json_path)
