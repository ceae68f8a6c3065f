"""``python -m server`` with HttpLimits / RequestLimits from the environment, for the
budget suites until the settings tree turns those sections into flags.

Run as ``python -m tests.limits_server -m server ARGS`` (devtools.launch's ``python``
prefix); ``CNN_TEST_HTTP_LIMITS`` and ``CNN_TEST_REQUEST_LIMITS`` hold JSON objects of
field values.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from server.__main__ import parse_args
from server.app import serve
from server.settings.limits import HttpLimits, RequestLimits

HTTP_ENV, REQUEST_ENV = "CNN_TEST_HTTP_LIMITS", "CNN_TEST_REQUEST_LIMITS"


def main(argv: list[str]) -> int:
    if argv[:2] == ["-m", "server"]:
        argv = argv[2:]
    return asyncio.run(
        serve(
            parse_args(argv),
            http_limits=HttpLimits(**json.loads(os.environ.get(HTTP_ENV, "{}"))),
            request_limits=RequestLimits(**json.loads(os.environ.get(REQUEST_ENV, "{}"))),
        )
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
