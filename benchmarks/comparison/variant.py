"""One server variant of the comparison: started, measured in sandwiched rounds, stopped.

Each server level is measured between two in-process slices (the same batch
before and after), so that benchmarks/comparison/compare.py can leave out the
pairs that straddle a change of the host's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.comparison.compare import summarize_variant
from benchmarks.comparison.session import InProcess, inproc_line
from benchmarks.loadtest import cli as load
from benchmarks.loadtest.infer_requests import shared_memory_request
from devtools.launch import Launched, launch

ROOT = Path(__file__).resolve().parents[2]


def _server_line(row: dict) -> str:
    srv = row["server"] or {}
    lat = row["latency"] or {}
    return (
        f"server c={row['concurrency']:<2} p50 {lat.get('p50_ms', 0):7.2f} ms"
        f" {row['throughput']:6.1f} img/s  errors {row['error_count']}"
        f"  batch eff. {srv.get('batching_efficiency') or 0:.2f}"
        f"  queue {srv.get('queue_ms_mean') or 0:.2f} ms"
        f"  compute {srv.get('compute_ms_mean') or 0:.2f} ms"
        f"  server e2e {srv.get('request_ms_mean') or 0:.2f} ms"
        f"  CPU client {row['client_cpu_pct']:.0f}%"
        f" server {row['server_cpu_pct'] or 0:.0f}%"
        f" others {row.get('other_cpu_pct') or 0:.0f}%"
    )


def split_variant(text: str) -> tuple[dict[str, str], list[str]]:
    """``"MALLOC_ARENA_MAX=2 --max-queue-delay-us 0"`` -> ({env}, [server flags]).

    Leading NAME=VALUE words set the server's environment, as in a shell.
    """
    words = shlex.split(text)
    env: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, value = words.pop(0).split("=", 1)
        if not name.isidentifier():
            raise SystemExit(f"--server-args: {name!r} is not an environment variable name")
        env[name] = value
    return env, words


def layout_of(flags: list[str], instances: int, threads: int) -> tuple[int, int]:
    """(model instances, intra-op threads each) a server started with ``flags`` runs:
    its ``--instance-count``/``--intra-op-threads`` where given, else the defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--instance-count", type=int, default=instances)
    parser.add_argument("--intra-op-threads", type=int, default=threads)
    known, _ = parser.parse_known_args(flags)
    return known.instance_count, known.intra_op_threads


def start_server(
    repository: Path,
    model: str,
    threads: int,
    extra: list[str],
    log: Path,
    profile: Path | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> Launched:
    """``python -m server`` for ``model`` on OS-picked localhost ports, once ready.

    ``extra`` flags come last, so they override ours (``--model-repository`` too).
    """
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    return launch(
        repository, "--model", model, "--intra-op-threads", str(threads), *extra,
        log=log, python=python, cwd=ROOT, env=env, timeout=timeout,
    )  # fmt: skip


def profile_top(prof: Path, out: Path, lines: int = 40) -> str:
    """The server's cProfile, by own time and by cumulative time, as text."""
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.strip_dirs().sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)
    out.write_text(buf.getvalue())
    return buf.getvalue()


def run_variant(
    args: argparse.Namespace,
    index: int,
    variant: str,
    inproc: InProcess,
    best: int,
    mode: str = "raw",
    reference: tuple[InProcess, int] | None = None,
    server_layout: bool = False,
) -> dict:
    """Start one server; rounds of [in-process, server level, in-process] per level.

    ``mode``: "raw" sends the tensor in each request; "shm" passes it through system
    shared memory (Triton's extension), as a client on the same host would; the
    "stream-" forms send the same requests over ModelStreamInfer, one stream per client.
    ``reference``: a second layout in process at its best batch (``server_layout``: the
    server's own instances x threads), which then also sandwiches the highest concurrency
    (``layout_before``/``layout_after``).
    """
    env, extra = split_variant(variant)
    tag = f"{index}-{mode}"
    profile = args.out / f"server-{tag}.prof" if args.profile else None
    server = start_server(
        args.repository,
        args.model,
        args.threads,
        extra,
        args.out / f"server-{tag}.log",
        profile,
        env=env,
    )
    try:
        rounds = _rounds(args, server, mode, inproc, best, reference)
    finally:
        rc = server.terminate()
    result = {
        "server_args": variant,
        "inputs": mode,
        "env": env,
        "exit_code": rc,
        "best_batch": best,
        "rounds": [{str(n): level for n, level in levels.items()} for levels in rounds],
    }
    result["summary"] = summarize_variant(variant, rounds, best)
    result["summary"]["inputs"] = mode
    if reference is not None and "layout_reference" in result["summary"]:
        result["summary"]["layout_reference"].update(
            name=reference[0].layout, best_batch=reference[1], server_layout=server_layout
        )
    if profile is not None and profile.is_file():
        result["profile"] = str(profile)
        profile_top(profile, args.out / f"server-{tag}.profile.txt")
    return result


def _rounds(
    args: argparse.Namespace,
    server: Launched,
    mode: str,
    inproc: InProcess,
    best: int,
    reference: tuple[InProcess, int] | None,
) -> list[dict[int, dict]]:
    """--rounds rounds over the running ``server``: per round, a sandwich per level."""
    rounds: list[dict[int, dict]] = []
    info = load.model_info(server.url, args.model)
    with contextlib.ExitStack() as stack:
        if mode.endswith("shm"):
            request = stack.enter_context(shared_memory_request(server.url, info, 1))
        else:
            request = load.tensor_request(info, 1)
        load.check_request(server.url, request)
        sandwich = _Sandwich(args, server, request, mode.startswith("stream"), inproc, best)
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds} ({mode} inputs)", flush=True)
            levels: dict[int, dict] = {}
            for n in args.concurrency:
                second = reference if n == max(args.concurrency) and n > 1 else None
                levels[n] = sandwich.level(n, second)
            rounds.append(levels)
    return rounds


@dataclass(frozen=True)
class _Sandwich:
    """A running server's levels, each between two in-process slices."""

    args: argparse.Namespace
    server: Launched
    request: bytes
    streaming: bool
    inproc: InProcess
    best: int

    def reference(self, batch: int, session: InProcess | None = None) -> dict:
        session = self.inproc if session is None else session
        row = session.measure(batch, self.args.inproc_seconds)
        print("    " + inproc_line(row), flush=True)
        return row

    def level(self, n: int, second: tuple[InProcess, int] | None) -> dict:
        """Concurrency ``n``; ``second``: another layout in process, sandwiching it too."""
        batch = 1 if n == 1 else self.best  # single stream vs batch 1, else vs the best
        before = self.reference(batch)
        second_before = self.reference(second[1], second[0]) if second else None
        row = load.run_closed_loop(
            self.server.url,
            self.request,
            n,
            self.args.seconds,
            self.args.warmup,
            metrics_url=self.server.metrics_url,
            model=self.args.model,
            server_pid=self.server.proc.pid,
            shared_channel=self.args.shared_channel,
            streaming=self.streaming,
        )
        print("    " + _server_line(row), flush=True)
        level = {"server": row, "before": before}
        if second:
            level["layout_before"] = second_before
            level["layout_after"] = self.reference(second[1], second[0])
        level["after"] = self.reference(batch)
        return level
