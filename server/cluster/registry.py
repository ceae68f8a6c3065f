"""Where each model replica's Prometheus endpoint is: Prometheus's scrape targets.

Every replica serves the single server's series (same names and labels) on a
port of its own node and records the URL in Ray's GCS key-value store; a
replica killed with its node leaves its key behind, so readers keep only the
URLs that answer.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ray.experimental import internal_kv

PREFIX = "kserve-replica:"


def register(key: str, description: dict[str, Any]) -> None:
    internal_kv._internal_kv_put(PREFIX + key, json.dumps(description), overwrite=True)


def unregister(key: str) -> None:
    internal_kv._internal_kv_del(PREFIX + key)


def _answers(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def replicas(timeout: float = 2.0) -> list[dict[str, Any]]:
    """The live replicas' descriptions (model, revision, node, metrics URL)."""
    found = []
    for key in internal_kv._internal_kv_list(PREFIX):
        raw = internal_kv._internal_kv_get(key)
        if raw is None:
            continue
        description = json.loads(raw)
        if description.get("metrics") and _answers(description["metrics"], timeout):
            found.append(description)
        else:
            internal_kv._internal_kv_del(key)
    return sorted(found, key=lambda d: (d["model"], d["node"], d["metrics"]))


def file_sd(descriptions: list[dict[str, Any]]) -> list[dict[str, object]]:
    """Prometheus ``file_sd_configs`` content for the replicas."""
    return [
        {
            "targets": [urllib.parse.urlsplit(d["metrics"]).netloc],
            "labels": {"ray_node": d["node"], "deployment": d["model"]},
        }
        for d in descriptions
    ]


def write_file_sd(path: Path, descriptions: list[dict[str, Any]]) -> None:
    """Written whole then renamed: Prometheus re-reads the file when it changes and must
    never see half of it."""
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps(file_sd(descriptions), indent=1))
    os.replace(staged, path)
