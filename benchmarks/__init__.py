"""Benchmarks, one module per measurement over `benchmarks.common`; `python -m benchmarks` runs them all (docs/benchmarks.md)."""
