"""Storage: the store file — its schema (`schema`), one TaskStore batch judged and written as
a unit of work (`store_batch`) with the checks and writes inside its transaction
(`store_ops`), the audit log's rows, meta and checkpoint (`auditlog`), where a writer of the
log starts, checked against its checkpoint (`chainstart`), and the small private files
beside it (`files`); and the same for PostgreSQL in cluster mode (`pg_schema`, the fenced
write `pg_store`, one chain per shard `pg_auditlog`). Plain functions over an open
connection; the actors own the connections."""
