"""Command-line flags generated from the settings tree (one flag per field)."""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from server.settings.tree import Settings

Leaf = tuple[str, ...]  # the path of a field in the tree: ("listeners", "grpc_port")
# The cluster's own section: its flags are `python -m server.cluster`'s, not the server's.
CLUSTER = "cluster"


def server_leaf(path: Leaf) -> bool:
    """The fields ``python -m server`` has flags for: all but the cluster's."""
    return path[0] != CLUSTER


def leaves(model: type[BaseModel] = Settings, prefix: Leaf = ()) -> list[tuple[Leaf, FieldInfo]]:
    """Every setting of the tree, sections walked in declaration order."""
    found: list[tuple[Leaf, FieldInfo]] = []
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found += leaves(kind, (*prefix, name))
        else:
            found.append(((*prefix, name), info))
    return found


def extra(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def flag_of(path: Leaf, info: FieldInfo) -> str:
    return extra(info).get("flag") or "--" + "-".join(path).replace("_", "-")


def _plain(annotation: Any) -> Any:
    """``int | None`` -> ``int``: the type a flag's text converts to."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kinds[0]
    return annotation


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _help(info: FieldInfo) -> str:
    text = " ".join((info.description or "").split())
    shown = info.default
    if shown not in (None, (), {}, "") and not isinstance(shown, bool):
        text += f" (default {shown})"
    return text.replace("%", "%%")


def _argument(group: Any, path: Leaf, info: FieldInfo) -> None:
    flag, kind = flag_of(path, info), _plain(info.annotation)
    common = {"dest": ".".join(path), "default": argparse.SUPPRESS, "help": _help(info)}
    common["metavar"] = extra(info).get("metavar") or path[-1].upper()
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        del common["metavar"]
        group.add_argument(
            flag, action="store_const", const=not extra(info).get("negate"), **common
        )
    elif origin is dict:
        group.add_argument(flag, action="append", type=_key_value, **common)
    elif origin is tuple and args and args[0] is int:
        group.add_argument(flag, nargs="+", type=int, **common)
    elif origin is tuple and extra(info).get("nargs"):
        group.add_argument(flag, nargs=extra(info)["nargs"], **common)
    elif origin is tuple:
        group.add_argument(flag, action="append", **common)
    else:
        group.add_argument(flag, type=kind if kind in (int, float, Path) else str, **common)


def section_doc(path: Leaf, model: type[BaseModel] = Settings) -> str | None:
    """The docstring of the section at ``path`` (``("cluster", "nodes")``)."""
    info = model.model_fields[path[0]]
    if len(path) == 1:
        return info.description
    return section_doc(path[1:], info.annotation)  # type: ignore[arg-type]


def add_settings(parser: argparse.ArgumentParser, include: Callable[[Leaf], bool]) -> None:
    """One flag per included field, grouped by section."""
    groups: dict[Leaf, Any] = {}
    for path, info in leaves():
        if not include(path):
            continue
        section = path[:-1]
        if section not in groups:
            groups[section] = parser.add_argument_group(section_doc(section)) if section else parser
        _argument(groups[section], path, info)


def build_parser(
    prog: str, description: str | None, include: Callable[[Leaf], bool] = server_leaf
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_file_options(parser)
    add_settings(parser, include)
    return parser


def add_file_options(parser: argparse.ArgumentParser) -> None:
    """``--settings FILE`` and ``--print-settings``."""
    parser.add_argument(
        "--settings",
        type=Path,
        metavar="FILE",
        help="a settings file (TOML, JSON or YAML, nested by section); flags and "
        "CNN_SERVING_* variables override it (also CNN_SERVING_SETTINGS_FILE)",
    )
    parser.add_argument(
        "--print-settings",
        action="store_true",
        help="print the effective settings and where each came from, then exit",
    )


def given(namespace: argparse.Namespace) -> dict[str, Any]:
    """The flags the user gave, as a nested dict (absent flags stay absent)."""
    nested: dict[str, Any] = {}
    fields = {".".join(path) for path, _ in leaves()}
    for dest, value in vars(namespace).items():
        if dest not in fields:  # --settings, a subcommand's own switches
            continue
        *sections, name = dest.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = (
            dict(value)
            if isinstance(value, list) and value and isinstance(value[0], tuple)
            else value
        )
    return nested
