"""Tests: tests/unit (fast tier) and tests/e2e (real dvc, processes; marker e2e)."""
