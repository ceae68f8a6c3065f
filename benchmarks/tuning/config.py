"""config.pbtxt in and out: the default candidate, a candidate written back, backups.

Only the serving fields change (max_batch_size, dynamic_batching's preferred
sizes and queue delay, instance_group's count, and the
``intra_op_thread_count`` parameter the server reads); inputs, outputs,
preprocessing and provenance parameters stay byte-for-byte what the exporter
wrote. Writes are atomic (temporary file + rename), and ``--apply`` keeps the
old file as ``config.pbtxt.bak-<timestamp>``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime
from pathlib import Path

from google.protobuf import text_format

from benchmarks.tuning.candidates import Candidate
from modelrepo.spec import CONFIG_FILE, parse_config
from protos import model_config_pb2 as mc

THREADS_PARAM = "intra_op_thread_count"  # read by server/models.py


def read_config(model_dir: Path) -> mc.ModelConfig:
    return parse_config(Path(model_dir) / CONFIG_FILE)


def candidate_from(config: mc.ModelConfig) -> Candidate:
    """The configuration as the server would run it (the search's baseline)."""
    dyn = config.dynamic_batching if config.HasField("dynamic_batching") else None
    max_batch = max(config.max_batch_size, 1)
    threads = (
        config.parameters[THREADS_PARAM].string_value if THREADS_PARAM in config.parameters else "0"
    )
    return Candidate(
        max_batch_size=max_batch,
        preferred_batch_sizes=tuple(
            b for b in (dyn.preferred_batch_size if dyn else ()) if b <= max_batch
        ),
        max_queue_delay_us=dyn.max_queue_delay_microseconds if dyn else 0,
        instances=sum(g.count or 1 for g in config.instance_group) or 1,
        intra_op_threads=int(threads or 0),
    )


def with_candidate(config: mc.ModelConfig, candidate: Candidate) -> mc.ModelConfig:
    """A copy of ``config`` serving ``candidate`` (dynamic batching switched on)."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.max_batch_size = candidate.max_batch_size
    dyn = out.dynamic_batching
    del dyn.preferred_batch_size[:]
    dyn.preferred_batch_size.extend(candidate.preferred_batch_sizes)
    dyn.max_queue_delay_microseconds = candidate.max_queue_delay_us
    kind = out.instance_group[0].kind if out.instance_group else mc.ModelInstanceGroup.KIND_AUTO
    del out.instance_group[:]
    out.instance_group.add(count=candidate.instances, kind=kind)
    if candidate.intra_op_threads:
        out.parameters[THREADS_PARAM].string_value = str(candidate.intra_op_threads)
    elif THREADS_PARAM in out.parameters:
        del out.parameters[THREADS_PARAM]
    return out


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def backup_path(model_dir: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(model_dir) / f"{CONFIG_FILE}.bak-{stamp}"
    n = 1
    while path.exists():  # two applies within one second
        n += 1
        path = Path(model_dir) / f"{CONFIG_FILE}.bak-{stamp}-{n}"
    return path


def apply(model_dir: Path, candidate: Candidate) -> Path:
    """Write ``candidate`` into ``model_dir``/config.pbtxt; returns the backup of the old file."""
    model_dir = Path(model_dir)
    config = read_config(model_dir)  # fails with the file's own error before anything moves
    backup = backup_path(model_dir)
    shutil.copy2(model_dir / CONFIG_FILE, backup)
    write_atomic(
        model_dir / CONFIG_FILE, text_format.MessageToString(with_candidate(config, candidate))
    )
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
        elif entry.name == CONFIG_FILE or entry.suffix == ".txt":
            shutil.copy2(entry, target / entry.name)
    return target


def write_candidate(staged: Path, base: mc.ModelConfig, candidate: Candidate | None) -> None:
    """``candidate``'s config in a staged model folder; None writes ``base`` unchanged."""
    config = base if candidate is None else with_candidate(base, candidate)
    write_atomic(Path(staged) / CONFIG_FILE, text_format.MessageToString(config))
