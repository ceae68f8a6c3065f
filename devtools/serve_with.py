"""``python -m devtools.serve_with ARGS``: ``python -m server ARGS`` with security settings.

A stopgap for ``devtools.launch`` until the settings tree puts ``SecuritySettings`` on
the server's command line: the section arrives as JSON in ``SECURITY_ENV`` and
replaces the default on the options the server's own parser builds from ``ARGS``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys

from server.__main__ import parse_args
from server.app import serve
from server.settings.security import SecuritySettings

SECURITY_ENV = "DEVTOOLS_SERVE_SECURITY"


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    security = SecuritySettings.model_validate_json(os.environ[SECURITY_ENV])
    return asyncio.run(serve(dataclasses.replace(opts, security=security)))


if __name__ == "__main__":
    sys.exit(main())
