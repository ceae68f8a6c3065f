"""Writing Triton-layout model repository entries, atomically.

    <repository>/<model>/config.pbtxt      ModelConfig, protobuf text format
    <repository>/<model>/labels.txt        one label per line
    <repository>/<model>/<version>/model.onnx
    <repository>/<model>/<version>/export.json

A version is assembled in a hidden staging folder inside the repository (same
filesystem) and renamed into place only when complete, so a failed export
leaves nothing behind and a server scanning the repository never sees half a
version. Names starting with '.' are not models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import text_format

from exporter.config import ModelCfg
from exporter.onnx import INPUT_NAME, OUTPUT_NAME
from protos import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"

InstanceKind = Literal["auto", "cpu", "gpu"]
_KINDS = {
    "auto": mc.ModelInstanceGroup.KIND_AUTO,
    "cpu": mc.ModelInstanceGroup.KIND_CPU,
    "gpu": mc.ModelInstanceGroup.KIND_GPU,
}


class RepositoryError(OSError):
    """The repository cannot be written, or a version argument is wrong."""


@dataclass(frozen=True)
class ServingCfg:
    """The serving half of config.pbtxt: batching and instances."""

    max_batch_size: int = 16
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 1000
    max_queue_size: int = 64
    instance_count: int = 1
    instance_kind: InstanceKind = "auto"
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size {self.max_batch_size} must be >= 1")
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred batch sizes {bad} must lie in 1..max_batch_size={self.max_batch_size}"
            )
        if self.instance_count < 1:
            raise ValueError(f"instance_count {self.instance_count} must be >= 1")
        if self.instance_kind not in _KINDS:
            raise ValueError(f"instance kind '{self.instance_kind}': choose from {list(_KINDS)}")


def model_config(
    cfg: ModelCfg,
    serving: ServingCfg,
    *,
    input_hw: tuple[int, int],
    dynamic_hw: bool,
    parameters: dict[str, str],
    platform: str = "onnxruntime_onnx",
    model_filename: str = "model.onnx",
) -> mc.ModelConfig:
    """The Triton ModelConfig for ``cfg`` as exported."""
    height, width = (-1, -1) if dynamic_hw else input_hw
    config = mc.ModelConfig(
        name=cfg.name,
        platform=platform,
        max_batch_size=serving.max_batch_size,
        default_model_filename=model_filename,
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        input=[
            mc.ModelInput(
                name=INPUT_NAME,
                data_type=mc.TYPE_FP32,
                format=mc.ModelInput.FORMAT_NCHW,
                dims=[cfg.channels, height, width],
            )
        ],
        output=[
            mc.ModelOutput(
                name=OUTPUT_NAME,
                data_type=mc.TYPE_FP32,
                dims=[cfg.num_classes],
                label_filename=LABELS_FILE,
            )
        ],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=list(serving.preferred_batch_sizes),
            max_queue_delay_microseconds=serving.max_queue_delay_us,
            default_queue_policy=mc.ModelQueuePolicy(max_queue_size=serving.max_queue_size),
        ),
        instance_group=[
            mc.ModelInstanceGroup(count=serving.instance_count, kind=_KINDS[serving.instance_kind])
        ],
    )
    for key, value in {**parameters, **serving.extra_parameters}.items():
        config.parameters[key].string_value = value
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def check_writable(repository: Path) -> Path:
    """Create ``repository`` if needed and prove a file can be written there."""
    repository = Path(repository)
    try:
        repository.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=repository, prefix=".probe-"):
            pass
    except OSError as exc:
        raise RepositoryError(f"model repository '{repository}' is not writable: {exc}") from exc
    return repository


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def choose_version(model_dir: Path, requested: int | None) -> int:
    if requested is not None:
        if requested < 1:
            raise RepositoryError(f"version {requested}: versions are positive integers")
        return requested
    versions = existing_versions(model_dir)
    return (versions[-1] + 1) if versions else 1


@contextmanager
def staging(repository: Path) -> Iterator[Path]:
    """A hidden scratch folder in the repository, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=repository))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def commit(
    repository: Path,
    name: str,
    version: int,
    version_dir: Path,
    config: mc.ModelConfig,
    labels: list[str],
) -> Path:
    """Move a finished ``version_dir`` into place and refresh config and labels."""
    model_dir = repository / name
    model_dir.mkdir(exist_ok=True)
    target = model_dir / str(version)
    # Labels and config first: a server that sees the new version must also
    # see a config that describes it.
    _write_text_atomic(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
    _write_text_atomic(model_dir / CONFIG_FILE, to_pbtxt(config))
    if target.exists():
        old = model_dir / f".replaced-{version}-{uuid.uuid4().hex}"
        os.replace(target, old)
        os.replace(version_dir, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(version_dir, target)
    return target
