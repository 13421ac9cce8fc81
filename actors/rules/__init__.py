"""The gate's rules as pure functions: request grammar and checks (`gate`), the keyed audit
chain and checkpoint arithmetic (`chain`), a workspace's shard and the fence a write carries
(`shards`, cluster mode). No actors, no I/O: the stage actors, the store operations and the
read-only audit tools all decide with these."""
