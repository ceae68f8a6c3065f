"""Hostile repository entries against a real server (issue 25, "loading you can trust").

Each entry is written the way an attacker with write access to the repository
would: labels.txt as a FIFO or a link to /dev/zero, a preferred batch size of
400,000, an ensemble step naming ``../outside/evil``, a load that takes minutes.
Each must fail its own load with a message naming the file or field, never freeze,
bloat or stop the server, and a repeated load of an unchanged model must not rebuild it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, text_format

from modelrepo.keys import CONFIG_FILE, LABELS_FILE
from protos import grpc_service_pb2 as pb
from protos import model_config_pb2 as mc
from server.core.errors import Unavailable
from server.core.metrics import Metrics
from server.core.models import ModelManager
from server.settings import ModelSettings
from server.settings.repository import RepositorySettings
from tests.kit import KIT
from tests.kit.http_kit import call
from tests.kit.serving import EXPLICIT, ServerProcess, digits, start_server, tensor_request
from tests.kit.triton_child import run_child

LENET = "lenet5"
MiB = 1 << 20


def add_entry(repo: Path, name: str, edit: Callable[[mc.ModelConfig], None] = lambda c: None):
    """A copy of lenet5 named ``name`` with ``edit`` applied to its config."""
    shutil.copytree(repo / LENET, repo / name, symlinks=True)
    config = text_format.Parse((repo / name / CONFIG_FILE).read_text(), mc.ModelConfig())
    config.name = name
    edit(config)
    (repo / name / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return repo / name


def slow_warmup(config: mc.ModelConfig) -> None:
    """Thousands of warm-up batches on one thread: minutes of loading on any host."""
    config.max_batch_size = 4000
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend(range(1, 4001))
    config.parameters["intra_op_thread_count"].string_value = "1"


def index(srv: ServerProcess) -> dict[str, pb.RepositoryIndexResponse.ModelIndex]:
    models = srv.stub().RepositoryIndex(pb.RepositoryIndexRequest()).models
    return {m.name: m for m in models}


def load_error(srv: ServerProcess, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        srv.stub().RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name), timeout=60)
    return err.value


def warmups(srv: ServerProcess, name: str) -> int:
    return srv.output().count(f"model {name} version 1 warmed up")


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@pytest.fixture(scope="module")
def hostile_repo(serve_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5 beside entries that used to hang start-up or read without end."""
    root = tmp_path_factory.mktemp("hostile")
    repo = root / "repo"
    repo.mkdir()
    shutil.copytree(serve_repo / LENET, repo / LENET)
    fifo = add_entry(repo, "fifo_labels") / LABELS_FILE
    fifo.unlink()
    os.mkfifo(fifo)
    zero = add_entry(repo, "zero_labels") / LABELS_FILE
    zero.unlink()
    zero.symlink_to("/dev/zero")
    shutil.copytree(serve_repo / LENET, root / "outside" / "evil")  # loadable, outside
    return repo


@pytest.fixture(scope="module")
def server(hostile_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        hostile_repo, log_dir=tmp_path_factory.mktemp("hostile-server"), security=EXPLICIT
    )
    yield srv
    assert srv.terminate(timeout=60) == 0, srv.output()[-4000:]


def test_start_finishes_past_a_fifo_and_dev_zero(server: ServerProcess, hostile_repo: Path):
    found = index(server)
    assert found[LENET].state == "READY"
    assert found["fifo_labels"].state == "UNAVAILABLE"
    assert "labels.txt: not a regular file (a FIFO)" in found["fifo_labels"].reason
    assert "labels.txt: not a regular file (a character device)" in found["zero_labels"].reason
    for entry in found.values():
        assert str(hostile_repo) not in entry.reason


def test_load_api_refuses_them_at_once_and_others_still_load(server: ServerProcess):
    for name, kind in (("fifo_labels", "a FIFO"), ("zero_labels", "a character device")):
        err = load_error(server, name)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert f"not a regular file ({kind})" in err.details()
    stub = server.stub()
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=LENET), timeout=60)
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=LENET), timeout=60)
    stub.ModelInfer(tensor_request(LENET, digits(1)), timeout=60)


def test_huge_preferred_batch_size_is_refused_by_name(server: ServerProcess, hostile_repo: Path):
    def huge(config: mc.ModelConfig) -> None:
        config.max_batch_size = 400_000
        config.dynamic_batching.preferred_batch_size.append(400_000)

    def above_max(config: mc.ModelConfig) -> None:
        config.dynamic_batching.preferred_batch_size.append(400_000)

    add_entry(hostile_repo, "huge_batch", huge)
    add_entry(hostile_repo, "above_max", above_max)
    before = peak_rss_mib(server.proc.pid)
    err = load_error(server, "huge_batch")
    for fragment in ("preferred_batch_size 400000", "268,435,456", "warmup_bytes"):
        assert fragment in err.details(), err.details()
    err = load_error(server, "above_max")
    assert "preferred_batch_size [400000] larger than max_batch_size 16" in err.details()
    assert peak_rss_mib(server.proc.pid) - before < 256, "the warm-up was allocated"


def test_ensemble_member_names_are_checked_before_any_path(
    server: ServerProcess, hostile_repo: Path
):
    for name, member in (("evil_ensemble", "../outside/evil"), ("etc_ensemble", "../../etc")):

        def ensemble(config: mc.ModelConfig, member: str = member) -> None:
            config.platform = "ensemble"
            config.ensemble_scheduling.step.add(model_name=member, model_version=-1)

        add_entry(hostile_repo, name, ensemble)
        err = load_error(server, name)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert f"step model_name {member!r} is not a model name" in err.details()
    assert not {"evil", "outside", "etc"} & set(index(server))


def test_unknown_model_load_answers_triton_wording_without_paths(
    server: ServerProcess, hostile_repo: Path
):
    err = load_error(server, "no_such_model")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "failed to load 'no_such_model', failed to poll from model repository"
    reply = call(f"{server.http_url}/v2/repository/models/no_such_model/load", b"")
    assert reply.status == 404
    assert str(hostile_repo) not in reply.body.decode()


def test_a_repeated_load_keeps_the_same_model(server: ServerProcess, hostile_repo: Path):
    stub = server.stub()
    load = pb.RepositoryModelLoadRequest(model_name=LENET)
    stub.RepositoryModelLoad(load, timeout=60)  # whatever the earlier tests did

    def inferences() -> int:
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=LENET))
        return stats.model_stats[0].inference_count

    stub.ModelInfer(tensor_request(LENET, digits(3)), timeout=60)
    count, served = warmups(server, LENET), inferences()
    assert served >= 3
    stub.RepositoryModelLoad(load, timeout=60)
    assert call(f"{server.http_url}/v2/repository/models/{LENET}/load", b"").status == 200
    assert inferences() == served and warmups(server, LENET) == count  # kept, not re-warmed
    config = hostile_repo / LENET / CONFIG_FILE
    config.write_text(config.read_text())  # rewritten: the folder changed
    stub.RepositoryModelLoad(load, timeout=60)
    assert inferences() == 0 and warmups(server, LENET) == count + 1


def test_load_with_config_and_files_through_tritonclient(
    server: ServerProcess, hostile_repo: Path, tmp_path: Path
):
    config = text_format.Parse((hostile_repo / LENET / CONFIG_FILE).read_text(), mc.ModelConfig())
    config.output[0].label_filename = ""  # the files given are the whole folder
    plan = {
        "grpc": server.url,
        "http": f"127.0.0.1:{server.http_port}",
        "model": LENET,
        "onnx": str(hostile_repo / LENET / "1" / "model.onnx"),
        "files_config": json_format.MessageToJson(config),
    }
    report = run_child(KIT / "triton_load.py", plan, tmp_path)
    for protocol, seen in report.items():
        assert seen["override"]["ok"], (protocol, seen["override"])
        assert seen["max_batch_after_override"] == 8, protocol
        assert seen["plain_reload"]["ok"] and seen["max_batch_after_plain_reload"] == 8
        for case, fragment in (
            ("malformed", "max_batch_size"),
            ("not_json", "not JSON"),
            ("no_input", "expected one input"),
        ):
            assert not seen[case]["ok"], (protocol, case)
            assert fragment in seen[case]["message"], (protocol, seen[case])
        assert seen["ready_after_refusals"] and seen["max_batch_after_refusals"] == 8
        assert seen["files"]["ok"], (protocol, seen["files"])
        assert seen["files_ready"] and seen["files_infer_shape"] == [2, 10]
        assert "need a 'config' parameter" in seen["files_without_config"]["message"]
        assert "expected 'file:<version>/<name>'" in seen["files_escaping"]["message"]
        unknown = seen["unknown"]["message"]
        assert unknown == "failed to load 'no_such_model', failed to poll from model repository"
        assert seen["restore"]["ok"]
    assert not (hostile_repo.parent / "escaped.onnx").exists()
    assert not list(hostile_repo.parent.rglob("escaped.onnx"))


def test_a_stuck_load_holds_up_nothing_and_sigterm_still_exits(
    serve_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo / LENET, repo / LENET)
    srv = start_server(repo, log_dir=tmp_path, security=EXPLICIT)
    try:
        add_entry(repo, "slow", slow_warmup)
        answer: dict[str, object] = {}
        loading = threading.Thread(
            target=lambda: answer.update(
                reply=call(f"{srv.http_url}/v2/repository/models/slow/load", b"", timeout=600)
            ),
            daemon=True,
        )
        loading.start()
        deadline = time.monotonic() + 120
        while index(srv)["slow"].state != "LOADING":
            assert time.monotonic() < deadline, "the slow load never started"
            time.sleep(0.05)
        stub = srv.stub()  # meanwhile other models unload, load and answer
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=LENET), timeout=60)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=LENET), timeout=60)
        stub.ModelInfer(tensor_request(LENET, digits(1)), timeout=60)
        assert index(srv)["slow"].state == "LOADING", "the slow load ended: not a stuck load"
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(timeout=60)
        took = time.monotonic() - started
    finally:
        srv.terminate(timeout=5)
    assert code == 0, srv.output()[-4000:]
    loading.join(timeout=60)
    reply = answer.get("reply")
    assert reply is None or reply.status != 200, reply  # never OK for what it did not do
    print(f"SIGTERM during a stuck load: exited in {took:.2f} s")


def test_load_timeout_frees_the_model_and_stops_the_build(serve_repo: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    shutil.copytree(serve_repo / LENET, repo / LENET)
    add_entry(repo, "slow", slow_warmup)

    async def scenario() -> tuple[str, float]:
        settings = RepositorySettings(load_timeout_s=1.0)
        manager = ModelManager(
            ModelSettings(repository=repo), Metrics.create(), repository=settings
        )
        started = time.monotonic()
        with pytest.raises(Unavailable) as err:
            await manager.load("slow")
        waited = time.monotonic() - started
        await manager.load(LENET)  # the loader is free
        assert manager.entries["slow"].state == "UNAVAILABLE"
        await manager.close()
        return str(err.value), waited

    message, waited = asyncio.run(scenario())
    assert "longer than 1 s (repository setting load_timeout_s)" in message
    deadline = time.monotonic() + 60
    while any(t.name == "model-loader" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the abandoned build kept running"
        time.sleep(0.05)
    print(f"load timeout 1 s: answered after {waited:.2f} s")


def test_config_json_is_validated_like_config_pbtxt() -> None:
    from modelrepo.override import config_from_json
    from modelrepo.spec import ModelConfigError

    base = mc.ModelConfig(name="m", max_batch_size=16)
    base.input.add(name="input", dims=[1, 32, 32])
    merged = config_from_json(json.dumps({"maxBatchSize": 8}), base, 1 << 20)
    assert merged.max_batch_size == 8 and list(merged.input[0].dims) == [1, 32, 32]
    for bad, fragment in (('{"max_batch_size": [1]}', "max_batch_size"), ("{", "not JSON")):
        with pytest.raises(ModelConfigError, match=fragment):
            config_from_json(bad, base, 1 << 20)
    with pytest.raises(ModelConfigError, match="config_bytes"):
        config_from_json(json.dumps({"name": "x" * 2000}), base, 1024)
