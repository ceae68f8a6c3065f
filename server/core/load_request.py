"""What a RepositoryModelLoad asks for, the same over gRPC and HTTP.

Triton's load takes two kinds of parameter: ``config`` (a ModelConfig in JSON used
instead of config.pbtxt) and ``file:<version>/<name>`` (file contents forming the
model's folder for this load; ``config`` must come with them). gRPC carries files
as ``bytes_param``, HTTP as base64 strings. Any other parameter is refused: a load
never answers OK for something it ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modelrepo.override import FILE_PREFIX, file_path
from modelrepo.spec import ModelConfigError
from server.core.errors import InvalidArgument, shown

CONFIG = "config"
ACCEPTED = f"'{CONFIG}' (string) and '{FILE_PREFIX}<version>/<name>' (file contents)"


@dataclass(frozen=True)
class LoadRequest:
    config: str | None = None  # ModelConfig JSON; None: the folder's config.pbtxt
    files: dict[str, bytes] = field(default_factory=dict)  # "file:1/model.onnx" -> bytes

    @property
    def plain(self) -> bool:
        """Nothing but the model's name: load what the repository holds."""
        return self.config is None and not self.files

    def digest(self) -> str:
        """Equal for equal requests (config text and every file's name and bytes)."""
        h = hashlib.sha256((self.config or "").encode())
        for key in sorted(self.files):
            h.update(b"\0" + key.encode() + b"\0" + hashlib.sha256(self.files[key]).digest())
        return h.hexdigest()

    def check(self, name: str) -> None:
        if self.files and self.config is None:
            raise InvalidArgument(
                f"failed to load '{name}': '{FILE_PREFIX}' parameters need a '{CONFIG}' "
                "parameter, the model configuration of the files given"
            )


def from_grpc(parameters: Mapping[str, Any]) -> LoadRequest:
    """RepositoryModelLoadRequest.parameters (ModelRepositoryParameter values)."""
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, param in parameters.items():
        kind = param.WhichOneof("parameter_choice")
        if key == CONFIG and kind == "string_param":
            config = param.string_param
        elif key.startswith(FILE_PREFIX) and kind == "bytes_param":
            files[_file_key(key)] = param.bytes_param
        else:
            raise _unknown(key, kind)
    return LoadRequest(config, files)


def from_json(doc: Any) -> LoadRequest:
    """The HTTP load body (``{"parameters": {...}}``, empty or absent for a plain load)."""
    if doc is None:
        return LoadRequest()
    if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
        raise InvalidArgument('load request body: expected {"parameters": {...}}')
    config: str | None = None
    files: dict[str, bytes] = {}
    for key, value in doc.get("parameters", {}).items():
        if key == CONFIG and isinstance(value, str):
            config = value
        elif key.startswith(FILE_PREFIX) and isinstance(value, str):
            try:
                files[_file_key(key)] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgument(f"load parameter {shown(key)}: not base64: {exc}") from exc
        else:
            raise _unknown(key, type(value).__name__)
    return LoadRequest(config, files)


def _file_key(key: str) -> str:
    try:
        file_path(key)
    except ModelConfigError as exc:
        raise InvalidArgument(str(exc)) from exc
    return key


def _unknown(key: str, kind: str | None) -> InvalidArgument:
    return InvalidArgument(
        f"load parameter {shown(key)} ({kind}) is not supported; accepted: {ACCEPTED}"
    )
