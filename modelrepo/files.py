"""Writing a Triton-layout model repository: config.pbtxt, labels, versions, atomically.

    <repository>/<model>/config.pbtxt      ModelConfig, protobuf text format
    <repository>/<model>/labels.txt        one label per line
    <repository>/<model>/<version>/...     model file and export.json

A version is assembled in a hidden staging folder inside the repository (same
filesystem) and renamed into place only when complete, so a failed export
leaves nothing behind and a server scanning the repository never sees half a
version. Single files are replaced the same way (write aside, ``os.replace``).
Names starting with '.' are not models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from google.protobuf import text_format

from modelrepo.keys import CONFIG_FILE, LABELS_FILE
from modelrepo.spec import parse_config
from protos import model_config_pb2 as mc


class RepositoryError(OSError):
    """The repository cannot be written, or a version argument is wrong."""


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(model_dir: Path) -> mc.ModelConfig:
    """``model_dir``/config.pbtxt; a malformed file fails naming its line (ModelConfigError)."""
    return parse_config(Path(model_dir) / CONFIG_FILE)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole: a reader sees the old text or the new, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_config(model_dir: Path, config: mc.ModelConfig) -> None:
    write_text_atomic(Path(model_dir) / CONFIG_FILE, to_pbtxt(config))


def model_folders(repository: Path) -> list[str]:
    """Folders in ``repository`` that name models (hidden staging folders excluded)."""
    root = Path(repository)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


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
    write_text_atomic(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
    write_config(model_dir, config)
    if target.exists():
        old = model_dir / f".replaced-{version}-{uuid.uuid4().hex}"
        os.replace(target, old)
        os.replace(version_dir, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(version_dir, target)
    return target
