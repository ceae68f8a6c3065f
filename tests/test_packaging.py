"""What pyproject.toml declares matches what the Makefile checks and what each role installs."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_declared_python_is_the_one_the_makefile_checks_and_runs() -> None:
    declared = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert declared, PYPROJECT["project"]["requires-python"]
    minimum = tuple(int(v) for v in declared.groups())
    checked = re.search(r"sys\.version_info >= \((\d+), (\d+)\)", MAKEFILE)
    assert checked and tuple(int(v) for v in checked.groups()) == minimum
    assert f"Python >= {minimum[0]}.{minimum[1]} is required" in MAKEFILE
    assert sys.version_info[:2] >= minimum
    # datetime.UTC (used by the client and the exporter) needs 3.11.
    assert minimum >= (3, 11)


def test_each_role_installs_only_what_it_needs() -> None:
    extras = {k: _names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    assert not extras["serve"] & {"torch", "torchvision", "timm", "matplotlib"}
    assert "matplotlib" not in extras["export"]
    assert "matplotlib" in extras["bench"]
    setup = re.search(r"pip install -e '\.\[([a-z,]+)\]'", MAKEFILE)
    assert setup and {"export", "serve", "dev", "bench"} <= set(setup.group(1).split(","))


def test_a_plain_install_leaves_out_the_benchmarks_and_devtools() -> None:
    """They run from a checkout; site-packages gets only what users import."""
    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    installed = {pattern.rstrip("*") for pattern in found}
    assert installed == {
        "modelrepo",
        "imaging",
        "engines",
        "exporter",
        "server",
        "protos",
        "client",
    }
    for script in ("latency", "load", "tune", "serve_vs_inprocess", "overhead"):
        text = (ROOT / "benchmarks" / f"{script}.py").read_text()
        assert "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))" in text, script
