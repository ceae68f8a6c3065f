"""Our server's CPU per request against bare grpc.aio/aiohttp servers:
`python benchmarks/overhead.py --help`.

The code lives in ``benchmarks.loadtest.overhead``; this script only runs it, so the command
stays the documented one. ``benchmarks`` is not installed
(a plain `pip install .` leaves it out): the checkout's root goes on the path first.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout

from benchmarks.loadtest.overhead import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
