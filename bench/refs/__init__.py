"""Reference servers the benchmarks compare teleconsult with."""
