"""Mechanism Y: the PySpark worker that detects patterns on the cumulative transaction stream."""
