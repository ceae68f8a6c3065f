"""Ensembles served as one model: exported by ``python -m exporter ensemble``, fanned out
through the members' own batchers by a real server, combined as the config says."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from exporter.digits import Recipe, split
from exporter.ensemble import EnsembleRequest, export_ensemble, member_entries
from modelrepo.spec import ModelConfigError, load_spec
from protos import grpc_service_pb2 as pb
from server.core.ensemble import EnsemblePlan, combine, plan_of
from server.core.tensors import parse_bytes_elements, softmax
from tests.kit.serving import (
    EXPLICIT,
    ServerProcess,
    in_process,
    logits_of,
    start_server,
    tensor_request,
)
from tests.kit.triton_child import triton_features

MEMBERS = ("lenet5_seed0", "lenet5_seed1", "lenet5_seed2")


def heldout_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` held-out digits, normalised as the config says (mean 0.5, std 0.5)."""
    _, x_test, _, y_test = split(Recipe())
    x = (x_test[:n].astype(np.float32) / 255.0 - 0.5) / 0.5
    return x[:, None], y_test[:n]


@pytest.fixture(scope="module")
def ensemble_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5x3 (three seeds, few epochs: accuracy is the benchmark's business), a vote
    over the same members, and an ensemble whose second member cannot load."""
    repo = tmp_path_factory.mktemp("ensemble-repo")
    export_ensemble(
        EnsembleRequest(
            name="lenet5x3", members=("lenet5",), seeds=(0, 1, 2), epochs=3, repository=repo
        ),
        progress=lambda _: None,
    )
    shutil.copytree(repo / "lenet5x3", repo / "vote3")
    config = repo / "vote3" / "config.pbtxt"
    text = config.read_text().replace('"lenet5x3"', '"vote3"')
    config.write_text(text.replace('"mean_softmax"', '"majority_vote"'))
    shutil.copytree(repo / "lenet5_seed1", repo / "broken_member")
    config = repo / "broken_member" / "config.pbtxt"
    config.write_text(config.read_text().replace('"lenet5_seed1"', '"broken_member"'))
    (repo / "broken_member" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    shutil.copytree(repo / "lenet5x3", repo / "with_broken")
    config = repo / "with_broken" / "config.pbtxt"
    text = config.read_text().replace('"lenet5x3"', '"with_broken"')
    config.write_text(text.replace('"lenet5_seed1"', '"broken_member"'))
    return repo


@pytest.fixture(scope="module")
def server(
    ensemble_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    srv = start_server(
        ensemble_repo, log_dir=tmp_path_factory.mktemp("ensemble-server"), security=EXPLICIT
    )
    yield srv
    srv.terminate(timeout=60)


def test_exported_entry_is_triton_ensemble(ensemble_repo: Path) -> None:
    spec = load_spec(ensemble_repo / "lenet5x3")
    assert spec.platform == "ensemble"
    assert [s.model_name for s in spec.config.ensemble_scheduling.step] == list(MEMBERS)
    assert all(s.model_version == -1 for s in spec.config.ensemble_scheduling.step)
    assert spec.versions == (1,) and spec.labels[:2] == ("0", "1")
    assert plan_of(spec) == EnsemblePlan(
        members=tuple((m, "") for m in MEMBERS), combine="mean_softmax"
    )


def test_served_ensemble_is_the_mean_of_member_probabilities(
    server: ServerProcess, ensemble_repo: Path
) -> None:
    stub = server.stub()
    x, _ = heldout_digits(12)
    before = {
        m: stub.ModelStatistics(pb.ModelStatisticsRequest(name=m)).model_stats[0].inference_count
        for m in MEMBERS
    }
    got = logits_of(stub.ModelInfer(tensor_request("lenet5x3", x), timeout=60))
    members = [softmax(in_process(ensemble_repo, m, x)) for m in MEMBERS]
    np.testing.assert_allclose(got, np.mean(members, axis=0), atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    for m in MEMBERS:  # every member computed the 12 rows through its own batcher
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=m)).model_stats[0]
        assert stats.inference_count == before[m] + 12
    ens = stub.ModelStatistics(pb.ModelStatisticsRequest(name="lenet5x3")).model_stats[0]
    assert ens.inference_count >= 12
    config = stub.ModelConfig(pb.ModelConfigRequest(name="lenet5x3")).config
    assert config.platform == "ensemble" and len(config.ensemble_scheduling.step) == 3


def test_tritonclient_sees_one_model(server: ServerProcess, tmp_path: Path) -> None:
    x, _ = heldout_digits(4)
    np.save(tmp_path / "digits.npy", x)
    plan = {"url": server.url, "ensemble": "lenet5x3", "digits": str(tmp_path / "digits.npy")}
    seen = triton_features(plan, tmp_path)["ensemble"]
    assert seen["platform"] == "ensemble" and seen["steps"] == list(MEMBERS)
    assert seen["shape"] == [4, 10]
    np.testing.assert_allclose(seen["row_sums"], 1.0, atol=1e-5)
    direct = logits_of(server.stub().ModelInfer(tensor_request("lenet5x3", x), timeout=60))
    np.testing.assert_allclose(seen["probs"], direct, atol=1e-6)


def test_classification_and_majority_vote(server: ServerProcess, ensemble_repo: Path) -> None:
    stub = server.stub()
    x, _ = heldout_digits(8)
    req = tensor_request("vote3", x)
    req.outputs.add(name="logits").parameters["classification"].int64_param = 2
    resp = stub.ModelInfer(req, timeout=60)
    assert list(resp.outputs[0].shape) == [8, 2]
    top = [in_process(ensemble_repo, m, x).argmax(1) for m in MEMBERS]
    strings = resp.raw_output_contents[0]
    first = [s.split(b":") for s in parse_bytes_elements(strings, 16, "logits")][::2]
    for row, (score, index, label) in enumerate(first):
        votes = [int(t[row]) for t in top]
        winner = int(index)
        assert votes.count(winner) == max(votes.count(v) for v in votes), (votes, winner)
        assert label == str(winner).encode() and 0 < float(score) <= 1


def test_member_that_fails_to_load_makes_ensemble_unavailable(server: ServerProcess) -> None:
    stub = server.stub()
    index = {m.name: m for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}
    assert index["lenet5x3"].state == "READY"
    assert index["with_broken"].state == "UNAVAILABLE"
    assert "member 'broken_member' failed to load" in index["with_broken"].reason
    assert not stub.ModelReady(pb.ModelReadyRequest(name="with_broken")).ready
    x, _ = heldout_digits(1)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(tensor_request("with_broken", x), timeout=60)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "broken_member" in err.value.details()


def test_unloading_a_used_member_is_refused(server: ServerProcess) -> None:
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as err:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="lenet5_seed2"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "lenet5x3" in err.value.details() and "vote3" in err.value.details()
    assert stub.ModelReady(pb.ModelReadyRequest(name="lenet5_seed2")).ready
    x, _ = heldout_digits(2)
    stub.ModelInfer(tensor_request("lenet5x3", x), timeout=60)  # still whole
    for name in ("vote3", "lenet5x3", "lenet5_seed2"):  # ensembles first, then it may go
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=name))
    assert not stub.ModelReady(pb.ModelReadyRequest(name="lenet5_seed2")).ready
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="lenet5x3"))
    assert stub.ModelReady(pb.ModelReadyRequest(name="lenet5_seed2")).ready  # loaded with it
    stub.ModelInfer(tensor_request("lenet5x3", x), timeout=60)


def test_combinations() -> None:
    a = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    b = np.log(np.array([[0.1, 0.8, 0.1], [0.2, 0.5, 0.3]]))
    c = np.log(np.array([[0.2, 0.7, 0.1], [0.4, 0.3, 0.3]]))
    members = (("a", ""), ("b", ""), ("c", ""))
    mean = combine(EnsemblePlan(members), [a, b, c])
    np.testing.assert_allclose(mean[0], [1.0 / 3, 1.7 / 3, 0.1], atol=1e-6)
    weighted = combine(EnsemblePlan(members, "weighted_mean", (2.0, 0.0, 0.0)), [a, b, c])
    np.testing.assert_allclose(weighted, np.exp(a), atol=1e-6)
    vote = combine(EnsemblePlan(members, "majority_vote"), [a, b, c])
    assert vote.argmax(1).tolist() == [1, 2]  # row 1: a 3-way tie, the mean breaks it
    np.testing.assert_allclose(vote.sum(1), 1.0, atol=1e-6)


def test_bad_entries_are_refused_with_their_reason(ensemble_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(ensemble_repo / "lenet5x3", tmp_path / "lenet5x3")
    config = tmp_path / "lenet5x3" / "config.pbtxt"
    config.write_text(config.read_text().replace("mean_softmax", "median"))
    with pytest.raises(ModelConfigError, match="'median' is not one of"):
        plan_of(load_spec(tmp_path / "lenet5x3"))
    with pytest.raises(ValueError, match="only works for"):
        member_entries(EnsembleRequest(name="x", members=("mobilenet_v2",), seeds=(0, 1)))
    with pytest.raises(ValueError, match="choose from"):
        EnsembleRequest(name="x", members=("lenet5",), combine="median")


def test_benchmark_table_reports_error_and_cost_against_one_network() -> None:
    from benchmarks.ensemble import table

    timing = {"p50_ms": 2.0, "p99_ms": 4.0, "images_per_s": 400.0}
    rows = [
        {"model": "lenet5_seed0", "accuracy": 0.96, **timing},
        {"model": "lenet5_seed1", "accuracy": 0.94},
        {
            "model": "lenet5x3",
            "accuracy": 0.975,
            "p50_ms": 3.0,
            "p99_ms": 6.0,
            "images_per_s": 200.0,
        },
    ]
    text = table({"heldout_images": 450, "epochs": 10, "rows": rows})
    assert "| lenet5x3 | 97.50% | 0.50x | 3.00 (1.50x) | 6.00 | 200 (0.50x) |" in text
    assert "mean single-network error 5.00%" in text
