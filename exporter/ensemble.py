"""``python -m exporter ensemble``: member entries plus one Triton ensemble entry.

Members that differ by seed are trained here (LeNet-5 on the digits: the only
model whose weights this project trains); every member of such an ensemble
shares one train/held-out split, so the ensemble is scored on digits none of
its members saw. Members named without seeds are exported as they are (their
default weights). The ensemble entry is Triton's ``platform: "ensemble"``
with one step per member and our combination as a parameter (see
docs/ensembles.md for where that goes beyond Triton).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter.digits import Recipe
from exporter.onnx_export import INPUT_NAME, OUTPUT_NAME
from exporter.pipeline import ExportRequest, export_model
from exporter.registry import resolve_name
from modelrepo import files, keys
from modelrepo.reading import DEFAULT_LIMITS, read_text
from modelrepo.serving import DEFAULT, ServingConfig
from modelrepo.spec import parse_config
from protos import model_config_pb2 as mc

COMBINATIONS = ("mean_softmax", "weighted_mean", "majority_vote")  # as server/core/ensemble.py
TRAINED_HERE = ("lenet5",)  # models whose weights a seed can retrain
_KEPT_PARAMETERS = ("preprocess.", "model.family", "model.source", "weights.")


@dataclass(frozen=True)
class EnsembleRequest:
    name: str
    members: tuple[str, ...]
    seeds: tuple[int, ...] = ()  # empty: members exported with their default weights
    combine: str = "mean_softmax"
    weights: tuple[float, ...] = ()  # weighted_mean only, one per member entry
    epochs: int = Recipe().epochs  # training epochs of seeded members
    repository: Path = Path("model_repository")
    serving: ServingConfig = DEFAULT

    def __post_init__(self) -> None:
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combination '{self.combine}': choose from {list(COMBINATIONS)}")
        if not self.members:
            raise ValueError("an ensemble needs at least one member model")


def member_entries(request: EnsembleRequest) -> list[tuple[str, str, int | None]]:
    """(entry name, model, seed or None) for every member, arguments checked first."""
    models = [resolve_name(m) for m in request.members]
    if not request.seeds:
        if len(models) < 2:
            raise ValueError("one member model without --seeds is no ensemble: give --seeds")
        return [(m, m, None) for m in models]
    other = [m for m in models if m not in TRAINED_HERE]
    if other:
        raise ValueError(
            f"--seeds retrains members, which only works for {list(TRAINED_HERE)}; "
            f"{other} have fixed weights: name them without --seeds"
        )
    if len(set(request.seeds)) != len(request.seeds):
        raise ValueError(f"--seeds {list(request.seeds)} repeats a seed")
    return [(f"{m}_seed{s}", m, s) for m in models for s in request.seeds]


def _trained_weights(seed: int, epochs: int) -> tuple[str, dict]:
    """A LeNet checkpoint for ``seed`` on the shared split (split seed 0); cached."""
    import torch

    from exporter.digits import load_or_train_lenet
    from exporter.models.lenet import LeNet5

    torch.manual_seed(seed)
    info = load_or_train_lenet(LeNet5(), Recipe(seed=seed, split_seed=0, epochs=epochs))
    return info["file"], info["metrics"]


def ensemble_config(
    name: str, member_config: mc.ModelConfig, request: EnsembleRequest, entries: list[str]
) -> mc.ModelConfig:
    """Triton's ensemble entry: the members' input and output, a step per member."""
    config = mc.ModelConfig(
        name=name,
        platform="ensemble",
        max_batch_size=member_config.max_batch_size,
        input=member_config.input,
        output=member_config.output,
    )
    for i, entry in enumerate(entries):
        step = config.ensemble_scheduling.step.add(model_name=entry, model_version=-1)
        step.input_map[INPUT_NAME] = INPUT_NAME
        step.output_map[OUTPUT_NAME] = f"{OUTPUT_NAME}_{i}"
    for key, value in member_config.parameters.items():
        if key.startswith(_KEPT_PARAMETERS):
            config.parameters[key].CopyFrom(value)
    config.parameters["ensemble.combine"].string_value = request.combine
    if request.weights:
        config.parameters["ensemble.weights"].string_value = ",".join(map(str, request.weights))
    return config


def export_ensemble(request: EnsembleRequest, progress: Callable[[str], None] = print) -> Path:
    """Export (or train and export) every member, then write the ensemble entry."""
    entries = member_entries(request)
    if request.weights and len(request.weights) != len(entries):
        raise ValueError(f"--weights has {len(request.weights)} values for {len(entries)} members")
    repository = files.check_writable(request.repository)
    summary = []
    for entry, model, seed in entries:
        weights, metrics = (None, {}) if seed is None else _trained_weights(seed, request.epochs)
        progress(
            f"member {entry}"
            + (f": held-out accuracy {metrics['heldout_accuracy']:.2%}" if metrics else "")
        )
        result = export_model(
            ExportRequest(
                model=model,
                weights=weights,
                repository=repository,
                serving=request.serving,
                entry_name=entry,
            ),
            progress=progress,
        )
        summary.append(
            {
                "entry": entry,
                "model": model,
                "seed": seed,
                "version": result.version,
                "accuracy": metrics,
            }
        )
    target = write_entry(repository, request, [e for e, _, _ in entries], summary)
    progress(f"ensemble {request.name} ({request.combine} of {len(entries)}) -> {target}")
    return target


def write_entry(
    repository: Path, request: EnsembleRequest, entries: list[str], summary: list[dict]
) -> Path:
    """The ensemble entry over member ``entries`` already in ``repository`` (next version)."""
    first = repository / entries[0]
    config = ensemble_config(request.name, parse_config(first / keys.CONFIG_FILE), request, entries)
    labels = read_text(first / keys.LABELS_FILE, DEFAULT_LIMITS.labels_bytes).splitlines()
    version = files.choose_version(repository / request.name, None)
    with files.staging(repository) as scratch:
        version_dir = scratch / str(version)  # Triton wants a version folder, empty
        version_dir.mkdir()
        (version_dir / "ensemble.json").write_text(json.dumps({"members": summary}, indent=2))
        return files.commit(repository, request.name, version, version_dir, config, labels)
