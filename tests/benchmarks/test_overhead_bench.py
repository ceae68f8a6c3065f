"""benchmarks/overhead.py (issue 28's measure): a tiny real run against our server and the
bare grpc.aio / aiohttp floors, its result files, and the profile summary's helpers.
No figure is compared with a speed: only that each was measured and is positive."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from benchmarks.loadtest import overhead
from benchmarks.loadtest.floor import start_floor
from benchmarks.loadtest.infer_requests import INFER_METHOD
from benchmarks.loadtest.profile import collapsed_top, split_waiting, top_markdown
from benchmarks.report import overhead as report
from exporter.pipeline import ExportRequest, export_model

MODEL = "lenet5"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("overhead-repo")
    # Random weights: what is computed does not matter here, and no training run.
    export_model(
        ExportRequest(model=MODEL, weights="random", repository=path), progress=lambda _: None
    )
    return path


@pytest.fixture(scope="module")
def tiny_run(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("overhead-out")
    argv = ["--repository", str(repo), "--models", MODEL, "--clients", "1",
            "--protocols", "grpc,http", "--seconds", "1", "--warmup", "0.3", "--rounds", "1",
            "--profile", "--out", str(out)]  # fmt: skip
    return overhead.main(argv), out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tiny_run_measures_ours_and_both_floors(tiny_run: tuple[int, Path]) -> None:
    code, out = tiny_run
    assert code == 0
    doc = json.loads((out / "overhead.json").read_text())
    assert set(doc) == {"meta", "summary", "http_vs_grpc", "runs", "profiles"}
    runs = doc["runs"]
    cells = {(r["protocol"], r["server"]): r for r in runs}
    assert len(runs) == 4 and set(cells) == {
        (p, s) for p in ("grpc", "http") for s in ("ours", "floor")
    }
    kinds = {(r["protocol"], r["server"]): r["server_kind"] for r in runs}
    assert kinds[("grpc", "floor")] == "bare grpc.aio"
    assert kinds[("http", "floor")] == "bare aiohttp"
    for r in runs:
        assert r["model"] == MODEL and r["clients"] == 1 and r["round"] == 1, r
        assert r["error_count"] == 0 and r["errors"] == {}, r
        # every figure measured and positive: the floors answered, /proc was read
        for key in ("requests", "requests_per_s", "server_cpu_us_per_request",
                    "server_cpu_pct", "p50_ms", "p99_ms"):  # fmt: skip
            assert r[key] is not None and r[key] > 0, (key, r)
        assert r["client_cpu_pct"] >= 0
        # the figure is the CPU share over the request rate of the same window
        expected = r["server_cpu_pct"] * 1e4 / r["requests_per_s"]
        assert r["server_cpu_us_per_request"] == pytest.approx(expected)


def test_summary_holds_the_ratio_per_cell(tiny_run: tuple[int, Path]) -> None:
    _, out = tiny_run
    doc = json.loads((out / "overhead.json").read_text())
    assert {(c["protocol"], c["clients"]) for c in doc["summary"]} == {("grpc", 1), ("http", 1)}
    by = {(r["protocol"], r["server"]): r for r in doc["runs"]}
    for cell in doc["summary"]:
        ours, floor = by[(cell["protocol"], "ours")], by[(cell["protocol"], "floor")]
        ratio = ours["server_cpu_us_per_request"] / floor["server_cpu_us_per_request"]
        assert cell["rounds"] == 1
        assert cell["cpu_ratio"] == {"median": pytest.approx(ratio)} | {
            k: pytest.approx(ratio) for k in ("lo", "hi")
        }
        assert cell["requests_per_s_ratio"]["median"] > 0
    [h] = doc["http_vs_grpc"]
    assert h["model"] == MODEL and h["cpu_ratio"]["median"] > 0


def test_files_machine_and_children(tiny_run: tuple[int, Path]) -> None:
    _, out = tiny_run
    doc = json.loads((out / "overhead.json").read_text())
    meta = doc["meta"]
    assert meta["models"] == [MODEL] and meta["rounds"] == 1 and meta["machine"]["cores"] >= 1
    servers = meta["servers"]
    assert len(servers) == 4 and len({s["pid"] for s in servers}) == 3  # ours serves both
    assert not [s for s in servers if _alive(s["pid"])], "a server outlived the benchmark"
    with (out / "overhead.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and float(rows[0]["server_cpu_us_per_request"]) > 0
    with (out / "overhead-summary.csv").open() as f:
        assert {"cpu_ratio.median", "ours_requests_per_s.median"} <= set(next(csv.DictReader(f)))
    md = (out / "overhead.md").read_text()
    assert "bare grpc.aio" in md and "bare aiohttp" in md and "CPU/request ours ÷ floor" in md


def test_profile_recorded_our_server(tiny_run: tuple[int, Path]) -> None:
    _, out = tiny_run
    profiles = json.loads((out / "overhead.json").read_text())["profiles"]
    assert {p["protocol"] for p in profiles} == {"grpc", "http"}
    for p in profiles:
        assert p["error"] is None, p["error"]
        assert set(p["files"]) == {"raw", "busy", "top", "svg"}
        assert Path(p["files"]["svg"]).read_text().lstrip().startswith("<?xml")
        assert "busy samples" in Path(p["files"]["top"]).read_text()
        assert Path(p["files"]["raw"]).stat().st_size > 0


def test_profile_summary_leaves_waits_out() -> None:
    text = (
        "main (a.py);loop (a.py);epoll_wait (libc.so.6) 50\n"
        "worker (b.py);Condition.wait (threading.py);PyThread_acquire_lock_timed (x);"
        "0x7f00 (libc.so.6) 30\n"
        "main (a.py);handle (a.py);0x7f1 (grpc.so);sendmsg (libc.so.6) 15\n"
        "main (a.py);handle (a.py);0x7f2 (grpc.so) 5\n"
    )
    busy, waits = split_waiting(text)
    assert waits == 80
    samples, rows = collapsed_top(busy)
    assert samples == 20
    assert rows[0] == ("sendmsg (libc.so.6)", 15, 15)
    assert ("(unnamed) (grpc.so)", 5, 20) in rows  # unnamed frames of a library add up
    md = "\n".join(top_markdown("t", busy, waits))
    assert "20 busy samples" in md and "80 more in blocking calls" in md


def test_summary_ratios_per_round() -> None:
    def run(round_: int, server: str, us: float, rps: float) -> dict:
        return {"round": round_, "model": "m", "protocol": "grpc", "clients": 8,
                "server": server, "server_cpu_us_per_request": us, "requests_per_s": rps,
                "p50_ms": 1.0, "error_count": 0}  # fmt: skip

    runs = [run(1, "ours", 1000, 1500), run(1, "floor", 250, 4500),
            run(2, "ours", 900, 1600), run(2, "floor", 300, 4000)]  # fmt: skip
    [cell] = report.summarize(runs)
    assert cell["cpu_ratio"] == {"median": 3.5, "lo": 3.0, "hi": 4.0}
    assert cell["ours_server_cpu_us_per_request"] == {"median": 950, "lo": 900, "hi": 1000}
    assert cell["requests_per_s_ratio"]["lo"] == pytest.approx(1500 / 4500)


@pytest.mark.parametrize(
    "flag, value, message",
    [("--protocols", "grpc,ftp", "grpc, http"), ("--clients", "1,0", "numbers > 0")],
)
def test_bad_options_name_the_allowed_ones(flag: str, value: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        overhead.parse_args([flag, value])


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def test_sigterm_stops_every_child(repo: Path, tmp_path: Path) -> None:
    """Stopped mid-window, the benchmark takes our server and both floors down with it."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--repository", str(repo),
           "--models", MODEL, "--clients", "1", "--seconds", "60", "--warmup", "0",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # every server up, the first window begins
            seen.append(line)
            if line.startswith("measuring;"):
                break
        assert seen and seen[-1].startswith("measuring;"), "".join(seen)
        children = _children(proc.pid)
        assert len(children) == 3, children  # ours and two floors
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_thread_hop_floor_answers_its_bytes_from_a_worker_thread(tmp_path: Path) -> None:
    """``--grpc-floor thread``: the floor's answer, unchanged, to concurrent calls; a hop
    is gRPC's only."""
    answer = b"\x0a\x06lenet5 fixed answer bytes"
    floor = start_floor("grpc", answer, tmp_path, hop="thread")
    try:
        with grpc.insecure_channel(floor.url) as channel:
            call = channel.unary_unary(
                INFER_METHOD, request_serializer=None, response_deserializer=None
            )
            futures = [call.future(b"request %d" % i, timeout=30) for i in range(16)]
            assert [f.result() for f in futures] == [answer] * 16
    finally:
        floor.terminate()
    with pytest.raises(ValueError, match="gRPC's only"):
        start_floor("http", answer, tmp_path, hop="thread")
