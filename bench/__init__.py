"""Benchmarks: query latency of the analytics at 10 and 50 million events (queries.py)."""
