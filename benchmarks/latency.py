"""In-process latency per backend, precision and batch size: `python benchmarks/latency.py --help`.

The code lives in ``benchmarks.inprocess.cli``; this script only runs it, so the command stays
the documented one. ``benchmarks`` is importable because the project is installed
(`make setup`, `pip install -e .`) or on PYTHONPATH.
"""

import sys

from benchmarks.inprocess.cli import main

if __name__ == "__main__":
    sys.exit(main())
