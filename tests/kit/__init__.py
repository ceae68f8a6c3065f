"""The tests' helpers in one place: servers started for real, load and stress tools,
certificates, network namespaces, and the child scripts that run tritonclient (which
cannot share the tests' process; they import each other by bare name from here)."""

from pathlib import Path

KIT = Path(__file__).resolve().parent  # the child scripts: ``KIT / "triton_session.py"``
