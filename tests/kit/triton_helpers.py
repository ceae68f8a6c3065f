"""Plain helpers for the suites that compare against tritonclient.

tritonclient cannot be imported in the pytest process (its generated protobuf
modules and ours define the same ``inference.*`` names), so these suites run it
in a child interpreter and compare what it printed; the helpers here are shared
by those comparisons and import nothing from tritonclient.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LENET = "lenet5"
LITE0 = "efficientnet_lite0"


def run_with_tritonclient(code: str, stdin: bytes = b"") -> dict[str, Any]:
    """Run `code` in a fresh interpreter (where tritonclient may be imported); parse its JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def labels_of(repository: Path, model: str) -> list[str]:
    return (repository / model / "labels.txt").read_text().splitlines()


def parse(entry: str) -> tuple[float, int, str]:
    """A classification string "score:index:label"."""
    score, index, label = entry.split(":", 2)
    return float(score), int(index), label


def assert_close(got: Any, want: np.ndarray, atol: float = 1e-4) -> None:
    """Shapes equal and values within ``atol``: the server must not change the numbers."""
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == want.shape
    assert float(np.max(np.abs(got - want))) <= atol


Digits = tuple[np.ndarray, np.ndarray]  # lenet5 inputs [N, 1, 32, 32] and their labels
Reference = Callable[[np.ndarray], np.ndarray]  # lenet5 in onnxruntime: x -> logits
