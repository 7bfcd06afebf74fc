"""Benchmarks: each runs teleconsult side by side with a reference on the same machine."""
