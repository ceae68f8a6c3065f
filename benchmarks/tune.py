"""The batching auto-tuner (make tune): `python benchmarks/tune.py --help`.

The code lives in ``benchmarks.tuning.cli``; this script only runs it, so the command stays
the documented one. ``benchmarks`` is importable because the project is installed
(`make setup`, `pip install -e .`) or on PYTHONPATH.
"""

import sys

from benchmarks.tuning.cli import main

if __name__ == "__main__":
    sys.exit(main())
