"""Benchmarks that print side-by-side ratios; run all with `python -m bench` (see docs/benchmarks.md)."""
