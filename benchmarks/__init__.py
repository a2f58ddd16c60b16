"""Benchmarks, one module per measurement over `benchmarks.common`; `python -m benchmarks` runs them all.

Their latest results, with date, machine and command: docs/benchmarks.md.
"""
