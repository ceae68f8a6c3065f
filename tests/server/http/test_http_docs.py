"""The curl examples of docs/http.md and the README run as written.

Every ```sh block that calls curl runs in bash (``set -euo pipefail``) against a
real server; only ``localhost:8000`` becomes the server's free port. Each
``# expect: TEXT`` line in a block must appear in what the block printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit.serving import ROOT, ServerProcess

BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
SOURCES = (ROOT / "docs" / "http.md", ROOT / "README.md")


def _examples() -> list[tuple[str, str]]:
    found = []
    for source in SOURCES:
        for number, match in enumerate(BLOCK.finditer(source.read_text())):
            if "curl " in match.group(1):
                found.append((f"{source.name}#{number}", match.group(1)))
    return found


EXAMPLES = _examples()


def test_the_docs_have_curl_examples() -> None:
    assert sum(name.startswith("http.md") for name, _ in EXAMPLES) >= 5
    assert any(name.startswith("README") for name, _ in EXAMPLES)


@pytest.mark.parametrize(("name", "script"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_curl_example_runs_as_written(http_server: ServerProcess, name: str, script: str) -> None:
    expected = re.findall(r"^# expect: (.*)$", script, re.MULTILINE)
    here = f"127.0.0.1:{http_server.http_port}"
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("localhost:8000", here)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PATH": path},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{name}:\n{script}\n{done.stderr}"
    assert expected, f"{name}: say what the example prints with '# expect:' lines"
    for text in expected:
        assert text in done.stdout, f"{name}: {text!r} not in:\n{done.stdout[-2000:]}"
