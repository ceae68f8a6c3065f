"""In-process latency per backend x precision x batch size (entry point: benchmarks/latency.py)."""
