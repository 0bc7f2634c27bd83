"""Benchmarks: the spectral study."""
