"""Local infrastructure helpers: what runs the pipeline on a laptop and in tests."""
