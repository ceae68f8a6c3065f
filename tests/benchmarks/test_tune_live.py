"""The tuner against real things: config.pbtxt written by the exporter, --apply with its
backup and a real server loading it, and one short real tuning run on LeNet.

Budgets are tiny, so the figures are noise; what is checked is that they are
consistent and that what was chosen is what got written and served.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.tuning import cli as tune
from benchmarks.tuning import config as tconfig
from benchmarks.tuning.live import apply_and_verify
from modelrepo import keys
from modelrepo.files import read_config
from modelrepo.serving import ServingConfig, read_serving
from modelrepo.spec import load_spec, parse_config

MODEL = "lenet5"


@pytest.fixture
def repo(serve_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the exported LeNet (the session repository stays untouched)."""
    shutil.copytree(serve_repo / MODEL, tmp_path / "repo" / MODEL)
    return tmp_path / "repo"


def test_the_default_candidate_is_what_the_exporter_wrote(repo: Path) -> None:
    assert read_serving(read_config(repo / MODEL)) == ServingConfig()


def test_writing_a_candidate_changes_only_the_serving_fields(repo: Path) -> None:
    model_dir = repo / MODEL
    before_text = (model_dir / "config.pbtxt").read_text()
    before = read_config(model_dir)
    chosen = ServingConfig(8, (4,), 250, 2, 1)
    backup = tconfig.apply(model_dir, chosen)
    assert backup.name.startswith("config.pbtxt.bak-") and backup.read_text() == before_text
    after = read_config(model_dir)
    assert read_serving(after) == chosen
    assert after.parameters[keys.INTRA_OP_THREADS].string_value == "1"
    for name in ("input", "output", "platform", "version_policy", "default_model_filename"):
        assert getattr(after, name) == getattr(before, name), name
    assert after.instance_group[0].kind == before.instance_group[0].kind
    assert (
        after.dynamic_batching.default_queue_policy == before.dynamic_batching.default_queue_policy
    )
    kept = {k: v for k, v in before.parameters.items()}
    assert {k: v for k, v in after.parameters.items() if k != keys.INTRA_OP_THREADS} == kept
    # The server's own reader accepts it; a second apply keeps both backups apart.
    assert load_spec(model_dir).config.max_batch_size == 8
    second = tconfig.apply(model_dir, chosen.changed(intra_op_threads=0))
    assert second != backup  # and it holds what the first apply wrote
    assert read_serving(parse_config(second)) == chosen
    assert keys.INTRA_OP_THREADS not in read_config(model_dir).parameters
    assert len(list(model_dir.glob("config.pbtxt.bak-*"))) == 2


def test_a_broken_config_is_refused_before_anything_is_written(repo: Path) -> None:
    model_dir = repo / MODEL
    (model_dir / "config.pbtxt").write_text("max_batch_size: [oops\n")
    with pytest.raises(ValueError, match=r"config.pbtxt:1:\d+ .*parse"):
        tconfig.apply(model_dir, ServingConfig())
    assert not list(model_dir.glob("config.pbtxt.bak-*"))


def test_applied_config_is_served_by_a_real_server(repo: Path, tmp_path: Path) -> None:
    chosen = ServingConfig(4, (2,), 500, 2, 1)
    backup, served = apply_and_verify(repo, MODEL, chosen, tmp_path / "server.log")
    assert served == chosen and backup.is_file()


def test_a_short_real_tuning_run_on_lenet(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = (repo / MODEL / "config.pbtxt").read_text()
    argv = [
        "--model", MODEL, "--p99-ms", "250", "--repository", str(repo), "--out", str(out),
        "--apply", "--budget-minutes", "1.5", "--batch-sizes", "1,4", "--curve-seconds", "0.05",
        "--concurrency", "1,4", "--seconds", "0.3", "--warmup", "0.1", "--max-seconds", "0.4",
        "--rate-steps", "2", "--top-k", "1", "--repeats", "2", "--max-candidates", "3",
    ]  # fmt: skip
    code = tune.main(argv)
    data = json.loads((out / "tune-lenet5.json").read_text())
    rows = list(csv.DictReader((out / "tune-lenet5.csv").open()))
    assert (out / "tune-lenet5.png").stat().st_size > 0
    assert len(rows) == len(data["candidates"]) <= 3
    assert [r["candidate"] for r in rows] == [c["candidate"] for c in data["candidates"]]
    default = next(c for c in data["candidates"] if c["default"])
    assert default["trials"] == 2  # measured again in the same run, for the comparison
    for c in data["candidates"]:
        for trial in c["trials_detail"]:
            assert 1 <= len(trial["sweep"]) <= 2 and 1 <= len(trial["rates"]) <= 2
            passing = [p for p in trial["rates"] if p["level"] == trial["server_rate"]]
            if trial["server_rate"] > 0:  # the reported rate is a probe that met the target
                assert passing and passing[-1]["p99_ms"] <= 250 and passing[-1]["rejected"] == 0
        assert c["server_rate_lo"] <= c["server_rate"] <= c["server_rate_hi"]
    assert data["verdict"].startswith("Server scenario") or "not reachable" in data["verdict"]
    after = (repo / MODEL / "config.pbtxt").read_text()
    backups = list((repo / MODEL).glob("config.pbtxt.bak-*"))
    if data["winner"] is None:
        assert code == 2 and after == before and not backups
    elif data["winner"] == data["default"]:
        assert code == 0 and after == before and not backups
    else:  # written, backed up, and a server started on the repository served it
        assert code == 0 and backups and backups[0].read_text() == before
        written = read_serving(read_config(repo / MODEL))
        assert written.label == data["winner"]["label"]


def test_a_target_below_in_process_compute_stops_before_any_server(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", MODEL, "--p99-ms", "0.001", "--repository", str(repo),
            "--out", str(tmp_path), "--batch-sizes", "1", "--curve-seconds", "0.05"]  # fmt: skip
    assert tune.main(argv) == 2
    out = capsys.readouterr().out
    assert "target not reachable" in out and "p99 target 0.001 ms" in out
    assert not (tmp_path / "tune-lenet5-work").exists()  # no server was started


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--p99-ms", "-5"], "--p99-ms -5.0: must be > 0"),
        (["--p99-ms", "50", "--concurrency", "1,x"], "--concurrency '1,x' must be comma-separated"),
        (["--p99-ms", "50", "--repeats", "0"], "--repeats 0: must be >= 1"),
    ],
)
def test_bad_arguments_are_named(argv: list[str], named: str, capsys) -> None:
    with pytest.raises(SystemExit):
        tune.parse_args(["--model", MODEL, *argv])
    assert named in capsys.readouterr().err
