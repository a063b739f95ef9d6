"""Benchmarks: `python bench/run.py` writes BENCHMARKS.md; the tests share its memory probe."""
