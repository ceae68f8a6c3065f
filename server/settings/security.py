"""Who may change the server, and which browsers may talk to it (issue 25).

Model control follows Triton's ``--model-control-mode``: off (``none``) unless the
operator switches it on, and then optionally guarded by a bearer token or by the
client certificates of mutual TLS. The host and origin lists keep web pages on other
sites, and DNS names rebound to this machine, away from the HTTP port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from server.settings.base import Section, setting

MODEL_CONTROL_MODES = ("none", "explicit")


class SecuritySettings(Section):
    """Model control and the HTTP port's browser checks."""

    model_control_mode: Literal["none", "explicit"] = setting(
        "none", flag="--model-control-mode", metavar="none|explicit"
    )
    """Triton's: none refuses model load/unload over gRPC and HTTP; explicit allows them."""

    model_control_token_file: Path | None = setting(
        None, flag="--model-control-token-file", metavar="FILE"
    )
    """File holding the token load/unload calls must send as 'Authorization: Bearer TOKEN'."""

    model_control_token_env: str | None = setting(
        None, flag="--model-control-token-env", metavar="NAME"
    )
    """Name of an environment variable holding that token (instead of a file)."""

    model_control_client_certs: bool = setting(False, flag="--model-control-client-certs")
    """Under mutual TLS, a verified client certificate also authorises load/unload."""

    allowed_hosts: tuple[str, ...] = setting((), flag="--http-allowed-host", metavar="NAME")
    """HTTP Host/Origin names accepted besides localhost and IPs ('.example.com': subdomains)."""

    @field_validator("model_control_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        text = value.strip().lower() if isinstance(value, str) else value
        if text == "poll":
            raise ValueError(
                "model control mode 'poll' (Triton's repository polling) is not supported: "
                "use 'explicit' and load changed models with RepositoryModelLoad or "
                "POST /v2/repository/models/NAME/load"
            )
        if text not in MODEL_CONTROL_MODES:
            raise ValueError(
                f"model control mode {value!r} is not one of {', '.join(MODEL_CONTROL_MODES)}"
            )
        return text

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return tuple(str(v).strip().lower().rstrip(".") for v in value if str(v).strip())
        return value
