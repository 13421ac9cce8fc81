"""The pipeline process: the actor system alone in a process of its own, the callers in the
embedding process, batches over a pipe between them (`RuntimeConfig(process_mode=
"pipeline")`).

- `host.PipelineHost`: the embedding process's side, an `ActorHost` for the driver.
- `child`: the pipeline process (`python -m task_ingress.runtime.pipeline.child FD`).
- `wire`: what crosses the pipe, as plain tuples (pickling the pydantic models costs
  ~50 us per request; tuples and validated constructors ~10).
"""
