"""The server against the same model in process: `python benchmarks/serve_vs_inprocess.py -h`.

The code lives in ``benchmarks.comparison.cli``; this script only runs it, so the command stays
the documented one. ``benchmarks`` is importable because the project is installed
(`make setup`, `pip install -e .`) or on PYTHONPATH.
"""

import sys

from benchmarks.comparison.cli import main

if __name__ == "__main__":
    sys.exit(main())
