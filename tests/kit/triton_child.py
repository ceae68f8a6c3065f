"""Run tests/kit/triton_features.py in a child interpreter (tritonclient cannot share our
process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("triton_features.py")


def triton_features(plan: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What a tritonclient user saw, as the child script's JSON report."""
    return run_child(SCRIPT, plan, folder)


def run_child(script: Path, plan: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run a tritonclient ``script`` on ``plan`` in a child interpreter; its JSON report."""
    (folder / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, str(script), str(folder / "plan.json")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)
