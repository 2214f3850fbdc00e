"""Mechanism X: the BankSim-shaped data generator and the chunk streamer.

Run as ``python -m producer generate|stream``.
"""
