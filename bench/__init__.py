"""Benchmarks: load generation and throughput measurements (`python -m bench.<name>`)."""
