"""Where each setting comes from: flags over ``CNN_SERVING_*`` over a file over defaults."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource

from server.settings.cli import Leaf, flag_of, leaves
from server.settings.tree import ENV_NESTED, ENV_PREFIX, Settings

FILE_ENV = ENV_PREFIX + "SETTINGS_FILE"
MAX_FILE_BYTES = 1 << 20  # a settings file is a page of text, not a payload


class SettingsError(ValueError):
    """A value no source may give; the message names the setting's flag and variable."""


def env_name(path: Leaf) -> str:
    return ENV_PREFIX + ENV_NESTED.join(path).upper()


def section_env(name: str, section: BaseModel) -> dict[str, str]:
    """A section's non-default values as ``CNN_SERVING_*`` variables (for a child server)."""
    env = {}
    for key, value in section.model_dump(mode="json", exclude_defaults=True).items():
        text = json.dumps(value) if isinstance(value, dict | list | bool) else str(value)
        env[env_name((name, key))] = text
    return env


def read_file(path: Path) -> dict[str, Any]:
    """A settings file, nested by section; TOML, JSON or YAML by its suffix."""
    if not path.is_file():
        raise SettingsError(f"settings file {path}: not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SettingsError(f"settings file {path}: larger than {MAX_FILE_BYTES} bytes")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml  # only for YAML files; pyyaml is not a serving dependency otherwise

            data = yaml.safe_load(text) or {}
        else:
            raise SettingsError(f"settings file {path}: suffix must be .toml, .json, .yaml or .yml")
    except (ValueError, ImportError) as exc:
        raise SettingsError(f"settings file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path}: expected a table of sections")
    return data


def read_env() -> dict[str, Any]:
    """``CNN_SERVING_<SECTION>__<FIELD>`` variables as a nested dict (pydantic-settings)."""
    return EnvSettingsSource(Settings)()


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def _has(layer: dict[str, Any], path: Leaf) -> bool:
    node: Any = layer
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@dataclass(frozen=True)
class Loaded:
    """The effective settings and the source of each field."""

    settings: Settings
    origin: dict[Leaf, str]  # "flag", "env CNN_SERVING_...", "file PATH" or "default"

    def report(self) -> str:
        """One line per setting: name, value, where it came from."""
        lines = []
        for path, _ in leaves():
            value: Any = self.settings
            for key in path:
                value = getattr(value, key)
            shown = json.dumps(value, default=str)
            lines.append(f"{'.'.join(path):36} = {shown:28} # {self.origin[path]}")
        return "\n".join(lines)


def load(flags: dict[str, Any], file: Path | None = None) -> Loaded:
    """Validate the layers together; a bad value names its flag and variable."""
    file = file or (Path(os.environ[FILE_ENV]) if os.environ.get(FILE_ENV) else None)
    layers = {"file": read_file(file) if file else {}, "env": read_env(), "flag": flags}
    try:
        settings = Settings.model_validate(_merge(*layers.values()))
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    origin: dict[Leaf, str] = {}
    for path, _ in leaves():
        origin[path] = (
            "flag"
            if _has(flags, path)
            else f"env {env_name(path)}"
            if _has(layers["env"], path)
            else f"file {file}"
            if _has(layers["file"], path)
            else "default"
        )
    return Loaded(settings, origin)


def _explain(exc: ValidationError) -> str:
    known = dict(leaves())
    problems = []
    for error in exc.errors():
        path = tuple(str(p) for p in error["loc"] if isinstance(p, str))
        while path and path not in known and len(path) > 1 and path[:-1] in known:
            path = path[:-1]
        if path in known:
            where = f"{flag_of(path, known[path])} / {env_name(path)}"
        elif len(path) == 1 and path[0] in Settings.model_fields:
            where = f"{path[0]} settings"
        else:
            sections = sorted({p[0] for p in known})
            where = f"setting {'.'.join(path) or '?'} (sections: {', '.join(sections)})"
        got = (
            f" (got {error['input']!r})" if "input" in error and error["type"] != "missing" else ""
        )
        problems.append(f"{where}: {error['msg']}{got}")
    return "; ".join(problems)
