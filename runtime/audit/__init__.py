"""`task-ingress audit`: read a store file read-only (`read`), verify its hash chain,
checkpoint and tables against each other (`verify`), query its records (`query`), and the
typer commands over them (`cli`). Imports no actor: it must run beside a live daemon."""
