"""Benchmarks: `python bench/run.py` writes BENCHMARKS.md."""
