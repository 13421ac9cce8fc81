"""The store file: its schema (`schema`), the TaskStore's checks and writes inside one
transaction (`store_ops`), and the audit log's rows and checkpoint (`auditlog`). Plain
functions over an open SQLite connection; the actors own the connections."""
