"""Benchmarks: the conditional study."""
