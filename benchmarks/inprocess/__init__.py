"""In-process latency per backend x precision x batch size.

Entry point: benchmarks/latency.py.
"""
