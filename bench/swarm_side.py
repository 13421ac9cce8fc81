"""`task-ingress bench --swarm`: the swarm in-process and over NATS, side by side.

Each round runs the swarms with the same settings (`task-ingress swarm`'s defaults but the
bench's `--requests`, `--seed` and `--churn`), in an order that alternates from round to
round so that a machine slowing down or speeding up falls on every side alike:

- `inproc-revoke`: the in-process swarm (a churning peer's leave revokes at once);
- `inproc-silence`: the same with `--leave silence` (a churning peer stops greeting and
  sits out its expiry): the workload a swarm over NATS runs, since AGH has no leave message.
  Only run with churn: without it no peer leaves and it would repeat `inproc-revoke`;
- `nats`: a fresh `task-ingress serve` (serve's defaults, the swarm's greet interval, its
  own nats-server on loopback and store) driven by the swarm's NATS transport.

Like for like is `nats` over the in-process swarm with the same leave: `inproc-silence`
with churn, `inproc-revoke` without. With churn, every side is also held back by its
peers' expiry waits (a peer that leaves sits out 2 x the greet interval, ~2 s, every ~50
requests), which caps a swarm with silent leaves at a few hundred requests per second
however fast its path: at the swarm's default churn the like-for-like ratio says that the
daemon keeps up with that pace, not that it is as fast. Churn 0 (the default here)
measures the paths themselves. `nats` over `inproc-revoke` with churn compares two
different workloads; it is given too, named for what it is.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from task_ingress.bench.daemon import ServeChild
from task_ingress.bench.workload import tree_cpu_seconds
from task_ingress.runtime.swarm.config import DEFAULT_GREET_INTERVAL, SwarmConfig

SIDES = ("inproc-revoke", "inproc-silence", "nats")
"""The swarms of a round with churn, in the first round's order."""
DEFAULT_CHURN = 0.0
"""The paths themselves: with churn the silent side is held back by expiry waits."""
VS_REVOKE = ("nats", "inproc-revoke")
VS_SILENCE = ("nats", "inproc-silence")


def sides(churn: float) -> tuple[str, ...]:
    """The swarms of each round: without churn no peer leaves, so one in-process swarm."""
    return SIDES if churn > 0 else ("inproc-revoke", "nats")


def like_for_like(churn: float) -> tuple[str, str]:
    """The pair with the same workload on both sides (the same leave semantics)."""
    return VS_SILENCE if churn > 0 else VS_REVOKE


def pairs(churn: float) -> tuple[tuple[str, str], ...]:
    """The ratios a bench shows, like for like first: with churn also the two default
    swarms' (a different workload on each side)."""
    return (VS_SILENCE, VS_REVOKE) if churn > 0 else (VS_REVOKE,)


def pair_name(pair: tuple[str, str]) -> str:
    """A ratio's JSON key: `nats_x_inproc_silence`."""
    return "_x_".join(pair).replace("-", "_")


@dataclass(frozen=True)
class SideRun:
    """One swarm of a round."""

    side: str
    transport: str
    """Where the swarm's requests went: inproc or nats (the swarm report's transport)."""
    throughput: float
    """Requests answered per second of the run (the swarm report's throughput)."""
    p50_ms: float
    ok: bool
    """Every invariant held and the run did something."""
    problem: str = ""
    """Why not ok: the broken invariants, the run's problem, or the error that stopped it."""
    cpu_ms: float = 0.0
    """This process's CPU per request sent, ms, over the whole run (start, swarm, checks):
    the whole in-process swarm, or over NATS the swarm's client."""
    daemon_cpu_ms: float | None = None
    """Over NATS: serve's CPU per request, ms, its nats-server (and any pipeline process)
    included, over the same run; None in-process."""


@dataclass(frozen=True)
class SwarmRound:
    """The swarms of one round, run one after the other, and the machine's load when the
    round began."""

    index: int
    order: tuple[str, ...]
    load: float
    runs: dict[str, SideRun]

    def ratio(self, pair: tuple[str, str]) -> float | None:
        """`pair[0]`'s throughput over `pair[1]`'s; None when either failed or is 0."""
        a, b = self.runs.get(pair[0]), self.runs.get(pair[1])
        if a is None or b is None or not (a.ok and b.ok) or b.throughput <= 0:
            return None
        return a.throughput / b.throughput


@dataclass
class SwarmBench:
    """Every round of one `bench --swarm` invocation."""

    requests: int
    seed: int
    churn: float
    rounds: list[SwarmRound] = field(default_factory=list)

    def median(self, pair: tuple[str, str]) -> float | None:
        """The median of the rounds' ratios for `pair` (None: no round gave one)."""
        values = [r for r in (rnd.ratio(pair) for rnd in self.rounds) if r is not None]
        return statistics.median(values) if values else None

    def median_cpu(self, side: str) -> tuple[float, float | None] | None:
        """The median (cpu_ms, daemon_cpu_ms) of `side`'s good runs (None: no good run)."""
        runs = [rnd.runs[side] for rnd in self.rounds if side in rnd.runs and rnd.runs[side].ok]
        if not runs:
            return None
        daemon = [r.daemon_cpu_ms for r in runs if r.daemon_cpu_ms is not None]
        return (statistics.median(r.cpu_ms for r in runs),
                statistics.median(daemon) if daemon else None)

    @property
    def failures(self) -> list[str]:
        """Every swarm that failed, as 'round N side: why'."""
        return [f"round {rnd.index} {run.side}: {run.problem}"
                for rnd in self.rounds for run in rnd.runs.values() if not run.ok]

    def to_json(self) -> dict[str, Any]:
        """The JSON `--json` writes."""
        shown = pairs(self.churn)
        return {
            "requests": self.requests, "seed": self.seed, "churn": self.churn,
            "like_for_like": pair_name(like_for_like(self.churn)),
            "rounds": [{"round": r.index, "order": list(r.order), "load": r.load,
                        "runs": {k: asdict(v) for k, v in r.runs.items()},
                        **{pair_name(pair): r.ratio(pair) for pair in shown}}
                       for r in self.rounds],
            "median": {pair_name(pair): self.median(pair) for pair in shown},
            "failures": self.failures,
        }


def round_order(index: int, churn: float) -> tuple[str, ...]:
    """Odd rounds run `sides(churn)` in order, even rounds reversed (round 1 is the first)."""
    order = sides(churn)
    return order if index % 2 else tuple(reversed(order))


def run_swarm_bench(requests: int, rounds: int, seed: int, churn: float = DEFAULT_CHURN,
                    on_phase: Callable[[str], None] = lambda what: None) -> SwarmBench:
    """Run `rounds` rounds of the swarms; a swarm that fails is recorded, not raised."""
    bench = SwarmBench(requests=requests, seed=seed, churn=churn)
    for index in range(1, rounds + 1):
        order = round_order(index, churn)
        load = os.getloadavg()[0]
        runs: dict[str, SideRun] = {}
        for side in order:
            on_phase(f"round {index}/{rounds}: {side}")
            runs[side] = run_side(side, requests, seed, churn)
        bench.rounds.append(SwarmRound(index=index, order=order, load=round(load, 2),
                                       runs=runs))
    return bench


def run_side(side: str, requests: int, seed: int, churn: float) -> SideRun:
    """One swarm at `task-ingress swarm`'s defaults but `requests`, `seed` and `churn`."""
    from task_ingress.runtime.swarm.cli import nats_factory
    from task_ingress.runtime.swarm.runner import SwarmResult, run_swarm

    base = dict(requests=requests, seed=seed, churn=churn, progress=False)
    result: SwarmResult
    own_before, _ = tree_cpu_seconds()
    daemon_cpu: float | None = None
    try:
        if side == "nats":
            work = tempfile.mkdtemp(prefix="task-ingress-bench-swarm-")
            try:
                # The operator's way: serve's defaults and the audit key it finds (the
                # environment's, else a key file it creates beside the fresh store, where
                # the swarm's checker looks too); the in-process swarm's greet interval.
                serve = ServeChild(os.path.join(work, "store.db"), [
                    "--greet-interval", f"{DEFAULT_GREET_INTERVAL:g}", "--log-level",
                    "warning"])
                try:
                    # serve and its children are this process's only children meanwhile
                    _, daemon_before = tree_cpu_seconds()
                    cfg = SwarmConfig(transport="nats", daemon=serve.ready_file,
                                      **base)  # type: ignore[arg-type]
                    result = run_swarm(cfg, nats_factory)  # type: ignore[arg-type]
                    daemon_cpu = tree_cpu_seconds()[1] - daemon_before
                finally:
                    serve.stop()
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            leave = side.removeprefix("inproc-")
            result = run_swarm(SwarmConfig(leave=leave, **base))  # type: ignore[arg-type]
    except Exception as exc:  # recorded: the other swarms still tell something
        return SideRun(side=side, transport="nats" if side == "nats" else "inproc",
                       throughput=0.0, p50_ms=0.0, ok=False,
                       problem=f"{type(exc).__name__}: {exc}"[:300])
    own_cpu = tree_cpu_seconds()[0] - own_before
    if result.interrupted:  # Ctrl-C: the swarm stopped early; so does the bench (exit 130)
        raise KeyboardInterrupt
    sent = max(1, result.stats.requests)
    broken = [c.name for c in result.checks if not c.ok]
    problem = "; ".join(result.run_problems + ([f"invariant(s) broken: {', '.join(broken)}"]
                                               if broken else []))
    return SideRun(side=side, transport=result.transport,
                   throughput=round(result.throughput, 1),
                   p50_ms=round(result.stats.percentile_ms(50), 2), ok=result.ok,
                   problem=problem, cpu_ms=round(1000 * own_cpu / sent, 3),
                   daemon_cpu_ms=(None if daemon_cpu is None
                                  else round(1000 * daemon_cpu / sent, 3)))
