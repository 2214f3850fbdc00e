"""Benchmarks of the pipeline against SPEC section 7 (``make bench``; see ``bench.run``)."""
