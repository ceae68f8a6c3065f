"""A load request's own model: Triton's ``config`` and ``file:<path>`` load parameters.

``config`` is a ModelConfig in JSON (protobuf's JSON mapping, as Triton parses it).
Triton fills what a config leaves out from the model file ("auto-complete"); we fill
it from the folder's config.pbtxt instead, since our preprocessing lives there: each
top-level field the JSON names replaces that field whole, the others stay. With
``file:`` parameters there is no folder: the files given form the model's folder
for that load, and the config must be complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from modelrepo.names import RULE, valid_name
from modelrepo.spec import ModelConfigError
from protos import model_config_pb2 as mc

FILE_PREFIX = "file:"
MAX_FILE_DEPTH = 4  # file:1/model.onnx has two parts; Triton's savedmodel folders have more


def config_from_json(text: str, base: mc.ModelConfig | None, max_bytes: int) -> mc.ModelConfig:
    """``text`` as a ModelConfig over ``base`` (fields it names replace base's; None: none).

    Raises ModelConfigError naming what is wrong (protobuf's message for the field).
    """
    if len(text.encode()) > max_bytes:
        raise ModelConfigError(
            f"config parameter of {len(text.encode()):,} bytes: more than the {max_bytes:,} "
            "allowed (repository setting config_bytes)"
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"config parameter is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelConfigError(f"config parameter must be a JSON object, not {type(doc).__name__}")
    override = mc.ModelConfig()
    try:
        json_format.ParseDict(doc, override)
    except json_format.ParseError as exc:
        raise ModelConfigError(f"config parameter is not a ModelConfig: {exc}") from exc
    merged = mc.ModelConfig()
    if base is not None:
        merged.CopyFrom(base)
    for key in doc:
        merged.ClearField(_field(key).name)
    merged.MergeFrom(override)
    return merged


def _field(key: str) -> Any:
    fields = mc.ModelConfig.DESCRIPTOR
    found = fields.fields_by_name.get(key) or fields.fields_by_camelcase_name.get(key)
    if found is None:  # ParseDict refused unknown keys already; kept for clarity
        raise ModelConfigError(f"config parameter: unknown field {key!r}")
    return found


def file_path(key: str) -> tuple[str, ...]:
    """``file:1/model.onnx`` -> ("1", "model.onnx"); refuses anything that could leave the
    folder (absolute paths, '..', empty or hidden parts, links are never written)."""
    parts = tuple(key.removeprefix(FILE_PREFIX).split("/"))
    if not (0 < len(parts) <= MAX_FILE_DEPTH) or not all(valid_name(p) for p in parts):
        raise ModelConfigError(
            f"load parameter {key[:120]!r}: expected 'file:<version>/<name>', each part {RULE}, "
            f"at most {MAX_FILE_DEPTH} parts"
        )
    return parts


@contextmanager
def staged_model(name: str, files: dict[str, bytes]) -> Iterator[Path]:
    """A private folder ``<tmp>/<name>`` holding ``files`` (keys as ``file:`` parameters),
    removed on exit: the runtime has read what it needs by then."""
    root = Path(tempfile.mkdtemp(prefix="cnn-serving-load-"))
    try:
        model_dir = root / name
        model_dir.mkdir()
        for key, content in files.items():
            parts = file_path(key)
            target = model_dir.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(target, flags, 0o600), "wb") as f:
                f.write(content)
        yield model_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)
