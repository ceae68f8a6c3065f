"""Which names may become paths: model names, and the file names a config.pbtxt gives.

A model name arrives in requests and in ensemble steps; a label or model file name
arrives in a config. Each is joined under the repository, so each is checked here,
before any path is built, by the one rule every reader shares.
"""

from __future__ import annotations

import re

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RULE = "1 to 128 letters, digits, '_', '-', '.' (no path separators, no '..')"


def valid_name(name: str) -> bool:
    """A model or file name that stays inside its folder when joined to it."""
    return bool(_NAME.fullmatch(name)) and ".." not in name
