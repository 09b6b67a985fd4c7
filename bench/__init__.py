"""Benchmarks, run as modules from the repository root (`python -m bench.verify`), so `tests.support` imports."""
