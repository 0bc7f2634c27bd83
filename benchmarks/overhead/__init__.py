"""Benchmarks: the overhead study."""
