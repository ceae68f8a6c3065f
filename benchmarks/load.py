"""Load against the server (closed and open loops): `python benchmarks/load.py --help`.

The code lives in ``benchmarks.loadtest.cli``; this script only runs it, so the command stays
the documented one. ``benchmarks`` is importable because the project is installed
(`make setup`, `pip install -e .`) or on PYTHONPATH.
"""

import sys

from benchmarks.loadtest.cli import main

if __name__ == "__main__":
    sys.exit(main())
