"""The store file: its schema (`schema`), the TaskStore's checks and writes inside one
transaction (`store_ops`), the audit log's rows, meta and checkpoint (`auditlog`), and where
a writer of the log starts, checked against its checkpoint (`chainstart`). Plain functions
over an open SQLite connection; the actors own the connections."""
