"""Cluster throughput for 1, 2, 3 ... daemons side by side (docs/cluster.md, "Numbers").

    python -m task_ingress.bench.cluster --server-url postgresql://postgres@127.0.0.1/postgres

For each daemon count it creates a fresh database on that server (dropped afterwards), starts
three routed nats-servers (once) and N `task-ingress serve --cluster` processes, waits until
the shards are spread over all N, greets one verified peer per workspace and sends signed
CreateTask requests from `--senders` threads for `--seconds`, then prints accepted requests
per second and latency percentiles per daemon count. Bounded in time; everything it starts
is stopped. The client runs on the same machine: on 2 cores the daemons, PostgreSQL, NATS
and the load share the CPUs, so this cannot show scale-out — only what it costs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

READY_TIMEOUT = 30.0
TRUST_POLL = 0.25


def _database_url(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _owners(database: str) -> list[str | None]:
    import psycopg
    from task_ingress.runtime.cluster import pg_leases

    with psycopg.connect(database, autocommit=True) as conn:
        if pg_leases.shard_count(conn) is None:
            return []
        return [s.owner for s in pg_leases.status(conn)]


def _start_daemons(n: int, workdir: Path, database: str, urls: list[str], token: str,
                   shards: int, workspaces: list[str], ttl: float,
                   audit_key: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        args = [sys.executable, "-m", "task_ingress", "serve", "--cluster", "--database",
                database, "--nats-url", urls[i % len(urls)], "--shards", str(shards),
                "--node-id", f"node-{i}", "--lease-ttl", str(ttl),
                "--key-file", str(workdir / "cluster.key"),
                "--trust-file", str(workdir / "trust.json"), "--store", str(workdir / "c"),
                "--ready-file", str(workdir / f"node-{i}.ready"), "--peer-rate", "0",
                "--max-in-flight-per-peer", "64", "--trust-poll-interval", str(TRUST_POLL)]
        for ws in workspaces:
            args += ["--workspace", ws]
        log = open(workdir / f"node-{i}.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            procs.append(subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "TASK_INGRESS_NATS_TOKEN": token,
                     "TASK_INGRESS_AUDIT_KEY": audit_key}))
        finally:
            log.close()
    deadline = time.monotonic() + READY_TIMEOUT
    for i, proc in enumerate(procs):
        while not (workdir / f"node-{i}.ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon node-{i} did not start: "
                                   f"{(workdir / f'node-{i}.log').read_text()[-2000:]}")
            time.sleep(0.05)
    while True:
        owners = _owners(database)
        if owners and None not in owners and len(set(owners)) == n:
            return procs
        if time.monotonic() > deadline:
            raise RuntimeError(f"shards not spread over {n} daemons: {owners}")
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _drive(ready_file: Path, nats_url: str, database: str, workspaces: list[str],
           senders: int, seconds: float) -> dict[str, Any]:
    from task_ingress.messages import CreateTask, PeerCard
    from task_ingress.messages.codec import decode_reply, encode_envelope
    from task_ingress.runtime.cluster.swarm_transport import ClusterSwarmTransport

    transport = ClusterSwarmTransport(ready_file=str(ready_file), nats_url=nats_url,
                                      database=database, request_timeout=10.0)
    try:
        peers = {ws: transport.peer_name(f"bench-{ws}") for ws in workspaces}
        time.sleep(4 * TRUST_POLL)  # every daemon has read the peers' trust
        for ws, peer in peers.items():
            for _ in range(50):
                with contextlib.suppress(Exception):
                    transport.greet(ws, "ops",
                                    PeerCard(peer_id=peer, capabilities=["task.write"],
                                             proof="signed"))
                    break
                time.sleep(0.1)
        latencies: list[float] = []
        refused: dict[str, int] = {}
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def run(k: int) -> None:
            mine = [workspaces[(k + j) % len(workspaces)] for j in range(len(workspaces))]
            i = 0
            while time.monotonic() < stop_at:
                ws = mine[i % len(mine)]
                i += 1
                rid = f"b-{uuid.uuid4().hex}"
                began = time.perf_counter()
                reply = decode_reply(transport.deliver(
                    encode_envelope(CreateTask(title="bench"), rid), workspace=ws,
                    channel="ops", peer_id=peers[ws]))
                took = time.perf_counter() - began
                with lock:
                    if reply.get("accepted"):
                        latencies.append(took)
                    else:
                        why = str(reply.get("reason"))
                        refused[why] = refused.get(why, 0) + 1

        began = time.monotonic()
        threads = [threading.Thread(target=run, args=(k,)) for k in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        elapsed = time.monotonic() - began
    finally:
        transport.close()
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) \
            if ordered else 0.0

    return {"accepted": len(latencies), "seconds": round(elapsed, 2),
            "accepted_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else 0.0,
            "refused": refused}


MAX_DAEMONS = 5
MAX_SECONDS = 300.0


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side bench; exit 0, or 2 when something could not start."""
    parser = argparse.ArgumentParser(prog="python -m task_ingress.bench.cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", required=True, help=(
        "PostgreSQL URL of a database on a server where this user may CREATE DATABASE"))
    parser.add_argument("--daemons", default="1,2,3", help="daemon counts (default 1,2,3)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--workspaces", type=int, default=12)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    try:
        counts = daemon_counts(args.daemons)
    except ValueError as exc:
        parser.error(str(exc))
    run_cluster_bench(args.server_url, counts, seconds=args.seconds, senders=args.senders,
                      shards=args.shards, workspaces=args.workspaces,
                      lease_ttl=args.lease_ttl, json_path=args.json_path)
    return 0


def daemon_counts(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3]; ValueError unless each is 1..MAX_DAEMONS."""
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or any(not 1 <= n <= MAX_DAEMONS for n in counts):
        raise ValueError(f"daemon counts {text!r}: give a comma list of numbers from 1 to "
                         f"{MAX_DAEMONS}")
    return counts


def spread_workspaces(count: int, shards: int) -> list[str]:
    """`count` workspace names (`ws-N`, N as small as it can be) that fall evenly on the
    `shards`: the k-th name on shard k mod `shards`. Names taken in order (`ws-0` ...
    `ws-11`) hash into only 8 of 12 shards, so a bench of "12 shards" loaded 8 runtimes."""
    from task_ingress.actors.rules.shards import shard_of

    names: list[str] = []
    taken: set[int] = set()
    for k in range(count):
        want = k % shards
        n = next(i for i in itertools.count() if i not in taken
                 and shard_of(f"ws-{i}", shards) == want)
        taken.add(n)
        names.append(f"ws-{n}")
    return names


def run_cluster_bench(server_url: str, counts: list[int], *, seconds: float = 10.0,
                      senders: int = 16, shards: int = 12, workspaces: int = 12,
                      lease_ttl: float = 10.0, json_path: str | None = None
                      ) -> list[dict[str, Any]]:
    """Measure each daemon count in a fresh database of `server_url`'s server (dropped
    afterwards), print a row per count and the table, write `json_path`; the rows."""
    import psycopg
    from task_ingress.runtime.cluster.nats_cluster import NatsCluster
    from task_ingress.runtime.nats.identity import generate_key, save_key

    served = spread_workspaces(workspaces, shards)
    results: list[dict[str, Any]] = []
    nats = NatsCluster(3).start()
    try:
        for n in counts:
            name = f"ti_bench_{n}_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(server_url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
            database = _database_url(server_url, name)
            with tempfile.TemporaryDirectory(prefix="ti-cbench-") as tmp:
                workdir = Path(tmp)
                save_key(str(workdir / "cluster.key"), generate_key())
                procs: list[subprocess.Popen[bytes]] = []
                try:
                    procs = _start_daemons(n, workdir, database, nats.urls, nats.token,
                                           shards, served, lease_ttl,
                                           os.environ.get("TASK_INGRESS_AUDIT_KEY")
                                           or secrets.token_hex(32))
                    row = _drive(workdir / "node-0.ready", nats.urls[-1], database,
                                 served, senders, seconds)
                finally:
                    _stop(procs)
                    with psycopg.connect(server_url, autocommit=True) as admin:
                        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            row = {"daemons": n, **row}
            results.append(row)
            print(f"{n} daemon(s): {row['accepted_per_s']:>8} accepted/s  p50 "
                  f"{row['p50_ms']} ms  p99 {row['p99_ms']} ms  ({row['accepted']} in "
                  f"{row['seconds']} s; refused {row['refused'] or 'none'})", flush=True)
    finally:
        nats.stop()
    print(f"\n{'daemons':>7}  {'accepted/s':>10}  {'p50 ms':>7}  {'p99 ms':>7}")
    for row in results:
        print(f"{row['daemons']:>7}  {row['accepted_per_s']:>10}  {row['p50_ms']:>7}  "
              f"{row['p99_ms']:>7}")
    print(f"(one machine, {os.cpu_count()} CPUs shared by daemons, PostgreSQL, NATS and "
          "the load: this cannot show scale-out)")
    if json_path:
        Path(json_path).write_text(json.dumps({"cpus": os.cpu_count(),
                                               "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main())
