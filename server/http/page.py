"""The try-it page at ``/``: static files, the zoo's facts and the benchmark charts.

Plain files, no build step, no request leaving the server. What the page
cannot get from the KServe endpoints (parameters and GMACs from each
version's ``export.json``, the in-process latency of the benchmark report) it
reads from ``/zoo.json``; the charts are the committed PNGs, served read-only
when the server runs from a checkout that has them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from modelrepo.keys import EXPORT_REPORT_FILE
from modelrepo.reading import read_json
from server.core.dataplane import DataPlane
from server.http import answers

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
BENCHMARKS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"
_EXPORT_FIELDS = ("params", "gmacs", "macs_input_size")


def _export_facts(folder: Path) -> dict[str, Any]:
    """What the exporter measured for one version (empty when export.json is missing)."""
    try:
        doc = read_json(folder / EXPORT_REPORT_FILE)  # bounded, regular files only
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    config = doc.get("config") or {}
    weights = doc.get("weights") or {}
    return {
        **{key: doc.get(key) for key in _EXPORT_FIELDS},
        "family": config.get("family"),
        "year": config.get("year"),
        "published_top1": config.get("published_top1"),
        "weights": weights.get("kind"),
        "trained": weights.get("trained"),
        "precision": (doc.get("precision") or {}).get("precision"),
    }


def _benchmark_latency() -> dict[str, float]:
    """In-process ONNX Runtime p50 at batch 1 per model, from the committed report."""
    try:
        rows = json.loads((BENCHMARKS / "latency.json").read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        row["model"]: row["p50_ms"]
        for row in rows
        if row.get("backend") == "onnxruntime" and row.get("batch") == 1 and row.get("p50_ms")
    }


def zoo(plane: DataPlane) -> dict[str, Any]:
    repository = plane.manager.opts.repository
    benchmark = _benchmark_latency()
    models = []
    for entry in plane.repository_index(ready_only=False).models:
        version = entry.version or ""
        facts = _export_facts(repository / entry.name / version) if version else {}
        models.append(
            {
                "name": entry.name,
                "version": version,
                "state": entry.state,
                "reason": entry.reason,
                **facts,
                "benchmark_p50_ms": benchmark.get(entry.name),
            }
        )
    charts = sorted(p.name for p in BENCHMARKS.glob("*.png")) if BENCHMARKS.is_dir() else []
    return {"models": models, "charts": charts}


def add_routes(app: web.Application, plane: DataPlane) -> None:
    charts = {p.name: p for p in BENCHMARKS.glob("*.png")} if BENCHMARKS.is_dir() else {}

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def zoo_json(request: web.Request) -> web.Response:
        return web.json_response(zoo(plane), dumps=answers.dumps)  # export.json may hold NaN

    async def chart(request: web.Request) -> web.FileResponse:
        path = charts.get(request.match_info["file"])  # only the files found at start
        if path is None:
            raise web.HTTPNotFound(text=f"no chart {request.match_info['file']!r}")
        return web.FileResponse(path)

    app.add_routes(
        [
            web.get("/", index),
            web.get("/zoo.json", zoo_json),
            web.get("/charts/{file}", chart),
            web.static("/static", STATIC, follow_symlinks=False),
        ]
    )
