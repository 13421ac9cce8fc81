"""The NATS transport: `task-ingress serve` speaking AGH's network protocol v0.

Modules: envelope (AGH v0 JSON envelope + subjects + the compact msgpack form), signing
(Ed25519 over canonical bytes), trust (the operator's trust file of peer keys), server
(a local nats-server), daemon (the serve loop), settings, metrics, ready (the ready file),
swarm_transport (a thread-safe client for the swarm), cli (the `serve` command).
Heavy imports (nats-py, prometheus-client) stay inside the modules that need them.
"""
