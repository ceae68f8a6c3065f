"""The server against the same model in process: `python benchmarks/serve_vs_inprocess.py -h`.

The code lives in ``benchmarks.comparison.cli``; this script only runs it, so the command stays
the documented one. ``benchmarks`` is not installed
(a plain `pip install .` leaves it out): the checkout's root goes on the path first.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout

from benchmarks.comparison.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
