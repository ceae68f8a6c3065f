"""The batching auto-tuner behind ``benchmarks/tune.py``.

candidates.py (what is searched, pruned by the in-process batch curve),
measure.py (one candidate: concurrency sweep + Server-scenario rate), search.py
(which candidates, re-measurement, the winner), config.py (config.pbtxt in and
out), live.py (the real server and load generator), report.py (table, files, chart),
progress.py (the progress bar).
candidates, measure and search are pure logic, tested on a simulated server
(tests/benchmarks/test_tune_search.py); the rest in tests/benchmarks/test_tune_live.py.
"""
