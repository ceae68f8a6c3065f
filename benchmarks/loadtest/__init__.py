"""Load against a running server: open and closed loops, its metrics (entry point: benchmarks/load.py)."""
