"""The server against the same model in process, paired (entry point: benchmarks/serve_vs_inprocess.py)."""
