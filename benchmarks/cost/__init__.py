"""Benchmarks: the cost study."""
