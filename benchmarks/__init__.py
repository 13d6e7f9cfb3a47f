"""Ratio benchmarks against peers run in the same process (never timed assertions in tests)."""
