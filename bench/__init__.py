"""Benchmarks of the pipeline against the targets in docs/performance.md (``bench.run``)."""
