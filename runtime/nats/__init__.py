"""The NATS transport: `task-ingress serve` as an AGH network peer (v0 and RFC 004 v1).

Modules: envelope (AGH's envelope rules, subjects, direct rooms), identity (RFC 004
Baseline Trust Profile: handles, JCS proofs, trust states), policy (the operator's trust
policy: which verified keys may be granted task.write), taskmap (task requests as `say`,
answers as `receipt`), compact (the opt-in msgpack fast path, not AGH), handler (judges one
message), daemon (the serve loop and its greets), client (the peer side, shared by the
`request` command and the swarm), swarm_transport, server (a local nats-server), settings,
metrics, ready (the ready file). The commands that use it (`serve`, `keygen`, `trust`,
`request`) are runtime/serve_cli.py and runtime/client_cli.py: they also reach cluster mode,
which is built on this package, so they stand above both.
Heavy imports (nats-py, prometheus-client) stay inside the modules that need them.
"""
