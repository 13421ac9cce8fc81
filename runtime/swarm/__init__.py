"""`task-ingress swarm`: simulated peer swarms driving the wire path, with invariant checks.

Modules, one job each: config (options), transport (how envelopes reach a runtime),
peers (simulated peers and the request mix), history (the swarm's own presence record),
journal (one line per request, on disk so the swarm's memory stays flat), stats (HDR
latency + timeline), runner (threads), invariants (post-run checks), report (table, JSON,
plot), cli (the typer command).
"""
