"""Benchmarks: the optimized server against the paper's naive baseline, and overload runs."""
