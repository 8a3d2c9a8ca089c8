"""Benchmarks: measured, printed as tables, compared with a baseline run in the same process."""
