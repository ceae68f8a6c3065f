"""The command line: versions, overwrites and clear errors that leave the repository alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=600
    )


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with lenet5 version 1, exported through the CLI."""
    path = tmp_path_factory.mktemp("repo")
    proc = run("export", "lenet", "--repository", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "parity vs PyTorch" in proc.stderr  # progress is visible, stage by stage
    return path


def test_versions_increment_and_explicit_version_overwrites(repo: Path) -> None:
    v1 = json.loads((repo / "lenet5" / "1" / "export.json").read_text())
    assert run("export", "lenet5", "--repository", str(repo)).returncode == 0
    assert sorted(p.name for p in (repo / "lenet5").iterdir() if p.is_dir()) == ["1", "2"]
    proc = run("export", "lenet5", "--repository", str(repo), "--version", "1")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((repo / "lenet5" / "1" / "export.json").read_text())
    assert again["exported_at"] >= v1["exported_at"] and again["version"] == 1
    assert not [p for p in repo.rglob(".*")], "staging leftovers in the repository"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
        (["export", "lenet5", "--weights", "/no/such/file.pt"], "no such file"),
        (["export", "resnet18", "--weights", "pretrained"], "no offline pretrained weights"),
        (["export", "lenet5", "--version", "0"], "versions are positive integers"),
        (["export", "lenet5", "--preferred-batch-size", "64"], "preferred batch sizes [64]"),
        (["export", "resnet18", "--input-size", "8"], "below resnet18's minimum"),
        (["predict", "nosuch", "x.png"], "no model 'nosuch'"),
    ],
)
def test_bad_input_fails_clearly_and_touches_nothing(
    repo: Path, args: list[str], message: str
) -> None:
    before = snapshot(repo)
    proc = run(*args, "--repository", str(repo))
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(repo) == before


def test_unknown_model_suggests_closest(repo: Path) -> None:
    proc = run("export", "resnt50", "--repository", str(repo))
    assert proc.returncode == 2 and "Did you mean 'resnet50'" in proc.stderr


def test_mismatched_state_dict_fails_without_writing(repo: Path, tmp_path: Path) -> None:
    import torch

    path = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(10, 84)}, path)
    before = snapshot(repo)
    proc = run("export", "lenet5", "--weights", str(path), "--repository", str(repo))
    assert proc.returncode == 2 and "missing key" in proc.stderr and "fc.weight" in proc.stderr
    assert snapshot(repo) == before


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_unwritable_repository(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    target = blocker if kind == "file" else blocker / "repo"
    proc = run("export", "lenet5", "--repository", str(target))
    assert proc.returncode == 2
    assert "is not writable" in proc.stderr and str(target) in proc.stderr
    assert blocker.read_text() == "a file, not a folder"


def test_predict_prints_top_k(repo: Path, photos: dict[str, Path]) -> None:
    proc = run(
        "predict", "lenet5", str(photos["coffee.png"]), "--top-k", "3", "--repository", str(repo)
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("  ")]
    assert len(lines) == 3


def test_predict_rejects_corrupt_image(repo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    proc = run("predict", "lenet5", str(bad), "--repository", str(repo))
    assert proc.returncode == 2 and "cannot decode image" in proc.stderr
