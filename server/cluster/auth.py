"""Ray's token authentication, on by default: the token file and how it reaches Ray.

With ``RAY_AUTH_MODE=token`` every connection to the GCS, the raylets and Ray's
workers must carry the cluster's token (Ray 2.60: gRPC metadata checked by
Ray's own interceptors), so reaching Ray's ports is no longer enough to run code
on the cluster. Ray reads the token from ``RAY_AUTH_TOKEN``, else from the file
``RAY_AUTH_TOKEN_PATH`` names, else from ``~/.ray/auth_token``. The head's ``up``
writes the file (mode 0600) when it is missing; every other node and client
needs a copy (``docs/cluster.md``). Each node's gRPC listener (port 8001) is the data
plane and asks for no token: its clients are tritonclient's.
"""

from __future__ import annotations

import os
import secrets

from server.settings.cluster import NodeSettings

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_BYTES = 32  # 256 bits, as Ray's own generator


def auth_env(node: NodeSettings) -> dict[str, str]:
    """The variables Ray reads its mode and token from, for ``ray start`` and clients."""
    if node.auth_mode == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    env = {"RAY_AUTH_MODE": "token"}
    if not os.environ.get(TOKEN_ENV):  # Ray prefers the variable to any file
        env["RAY_AUTH_TOKEN_PATH"] = str(node.token_path)
    return env


def ensure_token(node: NodeSettings, create: bool) -> None:
    """The token is there and only its owner can read it; ``create`` (a new head) writes
    a fresh one when the file is missing."""
    if node.auth_mode == "disabled" or os.environ.get(TOKEN_ENV):
        return
    path = node.token_path
    if not path.exists():
        if not create:
            raise FileNotFoundError(
                f"Ray token authentication is on and there is no token file {path}: copy the "
                f"head's token file here (mode 0600), or set {TOKEN_ENV}, or give "
                f"--auth-token-file PATH (--auth-mode disabled turns authentication off)"
            )
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(TOKEN_BYTES))
        return
    if path.stat().st_mode & 0o077:
        raise ValueError(
            f"token file {path} is readable by others (mode {path.stat().st_mode & 0o777:o}): "
            f"chmod 600 {path}"
        )
    if not path.read_text().strip():
        raise ValueError(f"token file {path} is empty")
