"""Reading a model repository you do not trust: regular files only, each with a size bound.

A repository entry is data from whoever could write the folder. ``labels.txt`` as a
FIFO would block ``open()`` until a writer came; as a link to ``/dev/zero`` a plain
``read()`` would never end. Every reader here opens with ``O_NONBLOCK`` (a FIFO opens
at once), checks the opened descriptor is a regular file (no race between check and
read), and reads at most the bound, so one bad entry fails its own load with a
message instead of freezing or bloating the server. The exporter and the server
read through the same functions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20


class UnsafeFileError(ValueError):
    """A repository file that is not a regular file, or larger than its bound."""


@dataclass(frozen=True)
class ReadLimits:
    """The most bytes each kind of repository file may hold (the server's settings fill it)."""

    config_bytes: int = 4 * MiB  # config.pbtxt (and a config given with a load request)
    labels_bytes: int = 16 * MiB  # labels.txt: 21k ImageNet classes take ~1 MiB
    report_bytes: int = 4 * MiB  # export.json
    cam_head_bytes: int = 256 * MiB  # cam_head.npz: [classes, C] float32


DEFAULT_LIMITS = ReadLimits()


def read_bytes(path: Path, max_bytes: int, field: str = "") -> bytes:
    """``path``'s bytes if it is a regular file of at most ``max_bytes``.

    ``field`` names the setting that bounds it, for the message.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnsafeFileError(f"{path}: cannot open: {exc.strerror}") from exc
    with os.fdopen(fd, "rb", buffering=0) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{path}: not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise UnsafeFileError(_too_big(path, info.st_size, max_bytes, field))
        data = f.read(max_bytes + 1)  # the file may have grown since fstat
    if len(data) > max_bytes:
        raise UnsafeFileError(_too_big(path, len(data), max_bytes, field))
    return data


def read_text(path: Path, max_bytes: int, field: str = "") -> str:
    data = read_bytes(path, max_bytes, field)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise UnsafeFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def read_json(path: Path, max_bytes: int = DEFAULT_LIMITS.report_bytes) -> Any:
    """export.json and other small JSON documents, bounded."""
    try:
        return json.loads(read_text(path, max_bytes, "report_bytes"))
    except json.JSONDecodeError as exc:
        raise UnsafeFileError(f"{path}: not JSON: {exc}") from exc


def check_regular(path: Path) -> Path:
    """``path`` (links followed) is a regular file: model files go to the runtime by path,
    and one that is a FIFO or a device would block or stream forever inside it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UnsafeFileError(f"{path}: cannot read: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(f"{path}: not a regular file ({_kind(mode)})")
    return path


def load_npz(path: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """A ``.npz`` of plain arrays, bounded: the archive by ``max_bytes``, each array by the
    bytes its member really holds (a header claiming more is refused, never allocated)."""
    data = read_bytes(path, max_bytes, "cam_head_bytes")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise UnsafeFileError(_too_big(path, total, max_bytes, "cam_head_bytes"))
            for member in members:
                name = member.filename.removesuffix(".npy")
                arrays[name] = _npy(archive.read(member), f"{path}:{member.filename}")
    except (zipfile.BadZipFile, ValueError, EOFError) as exc:
        if isinstance(exc, UnsafeFileError):
            raise
        raise UnsafeFileError(f"{path}: not a readable .npz: {exc}") from exc
    return arrays


def _npy(data: bytes, where: str) -> np.ndarray:
    """One ``.npy`` member without pickles and without trusting its header's shape."""
    fp = io.BytesIO(data)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise UnsafeFileError(f"{where}: .npy format {version} (1.0 or 2.0 expected)")
    if dtype.hasobject:
        raise UnsafeFileError(f"{where}: object arrays are refused (they would unpickle)")
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != len(data) - fp.tell():
        raise UnsafeFileError(
            f"{where}: header says {list(shape)} {dtype}, the member holds "
            f"{len(data) - fp.tell()} bytes"
        )
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=fp.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def fingerprint(model_dir: Path, max_files: int = 10_000) -> str:
    """What a model folder holds, as a digest of every entry's path, type, size, mtime and
    inode (not its contents): equal digests mean nothing was written there since.
    Hidden entries (staging, replaced versions) are skipped."""
    digest = hashlib.sha256()
    seen = 0
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in files if not n.startswith(".")):
            seen += 1
            if seen > max_files:
                raise UnsafeFileError(f"{model_dir}: more than {max_files} files")
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
                entry = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
            except OSError:
                entry = (0, 0, 0, 0)  # a dangling link: its name still counts
            rel = os.path.relpath(path, model_dir)
            digest.update(f"{rel}\0{entry}\n".encode())
    return digest.hexdigest()


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def _too_big(path: Path, size: int, limit: int, field: str) -> str:
    setting = f" (repository setting {field})" if field else ""
    return f"{path}: {size:,} bytes, more than the {limit:,} allowed{setting}"
