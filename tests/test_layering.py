"""Packages depend downward only: the repository contract and the runtimes are the floor.

Walks every module's syntax tree (imports inside functions included), so an arrow
the rules forbid fails here whether or not the code path that holds it runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from server.core import SURFACE

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"modelrepo", "imaging", "engines", "protos", "exporter", "server", "client"}
PROJECT |= {"benchmarks", "devtools", "tests"}
FLOOR = {"modelrepo", "imaging", "engines", "protos"}
# What each package may import from the project (besides itself).
ALLOWED = {
    "protos": set(),
    "modelrepo": {"protos"},
    "imaging": {"modelrepo", "protos"},
    "engines": {"modelrepo", "protos"},
    "exporter": FLOOR,
    "server": FLOOR,
    "client": FLOOR,
}


def project_imports(package: str) -> dict[str, set[str]]:
    """Module path -> project packages it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = (names & PROJECT) - {package}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_lies_below(package: str) -> None:
    bad = {
        module: sorted(names - ALLOWED[package])
        for module, names in project_imports(package).items()
        if names - ALLOWED[package]
    }
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}; found {bad}"


def test_the_exporter_never_imports_the_server() -> None:
    arrows = {m: n for m, n in project_imports("exporter").items() if "server" in n}
    assert not arrows, f"exporter -> server imports: {arrows}"


def test_the_floor_and_the_server_never_import_torch() -> None:
    heavy = {"torch", "torchvision", "timm"}
    for package in ("modelrepo", "imaging", "engines", "server"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not {n.split(".")[0] for n in names} & heavy, f"{path} imports torch"


# Rooms inside server/: the frontends translate at their edge and call only the core;
# the core uses batching; batching stands alone. Top-level modules (app, __main__,
# settings, startup) wire the rooms together and may use them all.
ROOMS = {
    "core": {"core", "batching", "settings"},
    "batching": {"batching", "settings"},
    "grpc": {"grpc", "core", "settings"},
    "http": {"http", "core", "settings"},
    "cluster": {"cluster", "core", "settings"},
}


def server_rooms_imported(path: Path) -> set[str]:
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        modules = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module]
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            else []
        )
        for module in modules:
            parts = module.split(".")
            if parts[0] == "server" and len(parts) > 1:
                rooms.add(parts[1])
    return rooms


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_server_rooms_import_only_what_lies_below(room: str) -> None:
    bad = {}
    for path in sorted((ROOT / "server" / room).rglob("*.py")):
        extra = server_rooms_imported(path) - ROOMS[room]
        if extra:
            bad[str(path.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"server/{room} may import only {sorted(ROOMS[room])}; found {bad}"


def core_modules_imported(path: Path) -> set[str]:
    """The ``server.core`` modules ``path`` imports (``from server.core import x`` too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[:2] == ["server", "core"]:
                found |= {parts[2]} if len(parts) > 2 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["server", "core"] and len(parts) > 2:
                    found.add(parts[2])
    return found


def test_frontends_use_only_the_cores_declared_surface() -> None:
    frontends = [ROOT / "server" / room for room in ("grpc", "http", "cluster")]
    paths = [p for folder in frontends for p in sorted(folder.rglob("*.py"))]
    paths += sorted((ROOT / "server").glob("*.py"))  # the wiring at the top
    bad = {
        str(path.relative_to(ROOT)): sorted(extra)
        for path in paths
        if (extra := core_modules_imported(path) - SURFACE)
    }
    assert not bad, f"outside server.core.SURFACE {sorted(SURFACE)}: {bad}"
    assert SURFACE <= {p.stem for p in (ROOT / "server" / "core").glob("*.py")}, SURFACE
