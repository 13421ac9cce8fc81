"""`task-ingress audit`: read a store file read-only (`read`), verify its keyed chain,
checkpoint, anchors and tables against each other (`verify`), anchors kept outside the store
(`anchor`: the signed head line, --expect-*), query its records (`query`), lay them out for
the terminal (`table`), and the typer commands over them (`cli`). Imports no actor: it must
run beside a live daemon."""
