"""Benchmarks of the chat site: relay latency, throughput, memory and rendering cost (`make bench`).

`python -m bench.run` runs them all and writes docs/benchmarks.md; see bench/run.py.
"""
