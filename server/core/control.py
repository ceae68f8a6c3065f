"""Who may load and unload models: one check, called by the gRPC and the HTTP frontend.

Model control is Triton's ``--model-control-mode``: ``none`` (the default) refuses
every load and unload with Triton's words and the setting that changes it; ``explicit``
allows them, to anyone unless a bearer token is configured or mutual-TLS client
certificates are trusted. The token is compared in constant time over its SHA-256, so
neither its bytes nor its length leak through timing, and no message ever repeats it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass

from server.core.errors import Unauthenticated, Unavailable
from server.settings.security import SecuritySettings

log = logging.getLogger(__name__)

_SCHEME = "bearer"


class ModelControlError(ValueError):
    """The model-control settings cannot be used as given (a start-up error)."""


@dataclass(frozen=True)
class Caller:
    """What a load/unload call brings to prove who it is."""

    authorization: str | None = None  # the Authorization header (gRPC: metadata) as sent
    client_cert: bool = False  # the TLS layer verified a client certificate on its connection


def _read_token(settings: SecuritySettings) -> bytes | None:
    path, env = settings.model_control_token_file, settings.model_control_token_env
    if path is not None and env:
        raise ModelControlError(
            "set one of model_control_token_file and model_control_token_env, not both"
        )
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ModelControlError(
                f"cannot read model_control_token_file {path}: {reason}"
            ) from None
        where = f"model_control_token_file {path}"
    elif env:
        text = os.environ.get(env, "")
        where = f"environment variable {env} (model_control_token_env)"
    else:
        return None
    token = text.strip()
    if not token:
        raise ModelControlError(f"{where} holds no token")
    if any(c.isspace() for c in token) or not token.isprintable() or not token.isascii():
        raise ModelControlError(f"{where}: the token must be printable ASCII without spaces")
    return hashlib.sha256(token.encode()).digest()


class ModelControl:
    """The gate in front of ``ModelManager.load`` / ``unload`` for both frontends."""

    def __init__(
        self, settings: SecuritySettings = SecuritySettings(), mutual_tls: bool = False
    ) -> None:
        """``mutual_tls``: the listeners require client certificates (a client CA is set)."""
        if settings.model_control_client_certs and not mutual_tls:
            raise ModelControlError(
                "model_control_client_certs trusts mutual-TLS client certificates: it needs "
                "--tls-cert, --tls-key and --tls-client-ca"
            )
        self.mode = settings.model_control_mode
        self._digest = _read_token(settings)
        self._certs = settings.model_control_client_certs
        if self.mode == "explicit" and self._digest is None and not self._certs:
            log.warning(
                "model control is explicit and unguarded: whoever reaches the gRPC or HTTP "
                "port can load and unload models (set model_control_token_file)"
            )

    @property
    def guarded(self) -> bool:
        """Load/unload need a credential (a token or a client certificate)."""
        return self._digest is not None or self._certs

    def authorize(self, action: str, caller: Caller) -> None:
        """Return if ``caller`` may ``action`` ("load" or "unload") a model; raise if not."""
        if self.mode != "explicit":
            raise Unavailable(
                f"explicit model load / unload is not allowed: model control mode is "
                f"'{self.mode}', so models cannot be {action}ed while the server runs "
                "(start it with --model-control-mode explicit to allow it)"
            )
        if not self.guarded or (self._certs and caller.client_cert):
            return
        if self._digest is None:
            raise Unauthenticated(
                f"model {action} needs a verified client certificate (mutual TLS)"
            )
        self._check_token(action, caller.authorization)

    def _check_token(self, action: str, authorization: str | None) -> None:
        if not authorization:
            raise Unauthenticated(
                f"model {action} needs a credential: send the header (gRPC: metadata) "
                "'authorization: Bearer <token>' with the server's model control token"
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != _SCHEME or not token.strip():
            raise Unauthenticated(  # never quoted: it may be the token sent bare
                f"model {action}: the authorization header must read 'Bearer <token>'"
            )
        sent = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        if not hmac.compare_digest(sent, self._digest):
            raise Unauthenticated(f"model {action}: the bearer token is not the right one")
