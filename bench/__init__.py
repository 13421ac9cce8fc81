"""Benchmarks: the runtime against a lock-based baseline."""
