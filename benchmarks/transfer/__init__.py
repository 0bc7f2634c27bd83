"""Benchmarks: the transfer study (defaults on image families nothing was tuned on)."""
