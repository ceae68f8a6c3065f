"""Start-up failures as one line for the operator, not a traceback.

A port in use, an unreadable repository or a TLS file that is not PEM are the
operator's to fix, and the fix is in the message: ``serve`` prints
``error: ...`` and exits 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from pathlib import Path

from server.settings.listeners import TlsSettings

EXIT_CODE = 2


class StartupError(Exception):
    """The server cannot start for a reason the operator can fix."""


def check_repository(path: Path) -> None:
    if not path.is_dir():
        raise StartupError(f"model repository '{path}' is not a directory")
    try:
        next(os.scandir(path), None)
    except OSError as exc:
        raise StartupError(f"model repository '{path}' is not readable: {exc.strerror}") from None


def check_tls(tls: TlsSettings) -> None:
    """Refuse TLS files grpc would reject with only 'Failed to bind' and C-level log lines."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for path, what in ((tls.cert, "--tls-cert"), (tls.key, "--tls-key"), (tls.client_ca, None)):
        if path is not None and not os.access(path, os.R_OK):
            raise StartupError(f"cannot read TLS file {path} ({what or '--tls-client-ca'})")
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, OSError) as exc:
        raise StartupError(
            f"--tls-cert {tls.cert} and --tls-key {tls.key} are not a PEM certificate chain "
            f"and its private key: {exc}"
        ) from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise StartupError(
                f"--tls-client-ca {tls.client_ca} holds no PEM certificate: {exc}"
            ) from None


def bind_error(what: str, host: str, port: int, exc: BaseException | None = None) -> StartupError:
    """Why ``host:port`` cannot be listened on; grpc says only 'Failed to bind', so ask the OS."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _probe(host, port)
    return StartupError(f"cannot listen for {what} on {host}:{port}: {reason}")


def _probe(host: str, port: int) -> str:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
    return "the address could not be bound"
