"""Load against a running server: open and closed loops, its metrics.

Entry point: benchmarks/load.py.
"""
