"""The server against the same model in process, paired.

Entry point: benchmarks/serve_vs_inprocess.py.
"""
