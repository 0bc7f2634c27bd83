"""Benchmarks: the validation study."""
