"""Benchmarks: the scale study."""
