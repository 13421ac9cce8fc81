"""The gate's pipeline: six stage actors, one per module, in a forwarding chain.

Each hop carries one message per batch and nobody waits for an answer (no star of asks):

    runtime driver
        │ SubmitBatch: every request and presence change waiting
        ▼
    IngressRouter           router.py      rules 1-2; spawns and supervises channel actors
        │ InFlights / PresenceFlight, one message per channel
        ▼
    ChannelIngress[ws, ch]  ingress.py     arrival order, pipeline depth, presence fence
        │ InFlights
        ▼
    Presence                presence.py    rule 3: is the peer visible?
        │ InFlights
        ▼
    Capability              capability.py  rule 4: does its card grant task.write?
        │ InFlights
        ▼
    TaskStore               task_store.py  rules 5-10 and the write: one transaction
        │ Verdicts, one per commit  ▲ChainLease     per batch, with the batch's records
        ▼                          │LeaseWanted     chained under Audit's lease
    Audit                   audit.py       owns the hash chain, group commit; then answers:
        ├── Replies ──▶ runtime driver (the callers)
        └── Dones ────▶ IngressRouter ── Dones ──▶ ChannelIngress (next may start)

A rejection leaves the chain where it is decided: the router, Presence and Capability
send it straight to Audit as a `Verdicts`, so every outcome is audited exactly once. A
greet or leave travels the same chain as far as Capability, which answers the caller.
Audit lends the chain's head to TaskStore for each batch and commits nothing while it is
out, so the store's one transaction holds the writes and their records (one commit, one
fsync per batch) and the chain still has one writer at a time (docs/durability.md).

On PostgreSQL (cluster mode) two stages have a twin that takes their place in the same
chain, with the same messages: PgTaskStore (`pg_task_store.py`) and PgAudit
(`pg_audit.py`), each transaction fenced by the shard's lease; PgTaskStore chains its batch
under PgAudit's lease in one fenced transaction, as TaskStore does under Audit's.

Beside the stages: `base.py` (what every stage shares), `log.py` (structlog set-up),
`rules/` (the pure gate, hash-chain and shard rules) and `storage/` (the SQLite and
PostgreSQL schemas, the store's SQL and batch, the audit logs' rows and checkpoint).
Neither subpackage imports an actor, so the read-only tools (`task-ingress audit`,
verify, the swarm's invariants) use them alone.
"""
