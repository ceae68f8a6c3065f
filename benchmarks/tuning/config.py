"""config.pbtxt in and out: the default candidate, a candidate written back, backups.

Only the serving fields change (max_batch_size, dynamic_batching's preferred
sizes and queue delay, instance_group's count, and the
``intra_op_thread_count`` parameter the server reads); inputs, outputs,
preprocessing and provenance parameters stay byte-for-byte what the exporter
wrote. Writes are atomic (temporary file + rename), and ``--apply`` keeps the
old file as ``config.pbtxt.bak-<timestamp>``.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from modelrepo import keys
from modelrepo.files import read_config, write_config
from modelrepo.serving import ServingConfig, write_serving
from protos import model_config_pb2 as mc


def with_candidate(config: mc.ModelConfig, candidate: ServingConfig) -> mc.ModelConfig:
    """A copy of ``config`` serving ``candidate``."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    write_serving(out, candidate)
    return out


def backup_path(model_dir: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(model_dir) / f"{keys.CONFIG_FILE}.bak-{stamp}"
    n = 1
    while path.exists():  # two applies within one second
        n += 1
        path = Path(model_dir) / f"{keys.CONFIG_FILE}.bak-{stamp}-{n}"
    return path


def apply(model_dir: Path, candidate: ServingConfig) -> Path:
    """Write ``candidate`` into ``model_dir``/config.pbtxt; returns the backup of the old file."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)  # fails with the file's own error before anything moves
    backup = backup_path(model_dir)
    shutil.copy2(model_dir / keys.CONFIG_FILE, backup)
    write_config(model_dir, with_candidate(config, candidate))
    return backup


def stage(model_dir: Path, staging: Path) -> Path:
    """A scratch repository serving ``model_dir``'s versions under the tuner's configs.

    Version folders are symlinked (nothing is copied but config and labels), so each
    candidate's config.pbtxt is written there and the source repository is untouched.
    """
    model_dir = Path(model_dir).resolve()
    target = Path(staging) / model_dir.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for entry in model_dir.iterdir():
        if entry.is_dir() and entry.name.isdigit():
            (target / entry.name).symlink_to(entry, target_is_directory=True)
        elif entry.name == keys.CONFIG_FILE or entry.suffix == ".txt":
            shutil.copy2(entry, target / entry.name)
    return target


def write_candidate(staged: Path, base: mc.ModelConfig, candidate: ServingConfig | None) -> None:
    """``candidate``'s config in a staged model folder; None writes ``base`` unchanged."""
    config = base if candidate is None else with_candidate(base, candidate)
    write_config(Path(staged), config)
