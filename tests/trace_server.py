"""``python tests/trace_server.py SETTINGS_JSON -m server ARGS...``: the server with trace settings.

Until the settings tree generates ``--trace-*`` flags from ``TraceSettings``, this is how a
test starts a real server process with tracing configured: the usual command line, plus the
section as JSON (``devtools.launch`` appends ``-m server ARGS`` to the interpreter command).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages

from server.__main__ import parse_args  # noqa: E402
from server.app import serve  # noqa: E402
from server.settings.tracing import TraceSettings  # noqa: E402


def main() -> int:
    settings = TraceSettings.model_validate_json(sys.argv[1])
    if sys.argv[2:4] != ["-m", "server"]:
        raise SystemExit("usage: trace_server.py SETTINGS_JSON -m server ARGS...")
    opts = dataclasses.replace(parse_args(sys.argv[4:]), tracing=settings)
    return asyncio.run(serve(opts))


if __name__ == "__main__":
    sys.exit(main())
