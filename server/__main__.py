"""``python -m server --model-repository model_repository`` (every flag: ``--help``;
each also reads ``CNN_SERVING_<SECTION>__<FIELD>`` and a ``--settings`` file)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from server.app import serve
from server.settings import Settings
from server.settings.cli import build_parser, given
from server.settings.sources import Loaded, SettingsError, load
from server.startup import StartupError, check_repository


def load_settings(argv: list[str] | None = None) -> Loaded:
    """Flags over environment over file over defaults; a bad value ends naming its flag."""
    parser = build_parser("python -m server", __doc__)
    args = parser.parse_args(argv)
    try:
        loaded = load(given(args), args.settings)
    except SettingsError as exc:
        parser.error(str(exc))
    if args.print_settings:
        print(loaded.report())
        raise SystemExit(0)
    _check_repository(parser, loaded.settings)
    return loaded


def _check_repository(parser: argparse.ArgumentParser, settings: Settings) -> None:
    repository = settings.models.repository
    if repository is None:
        parser.error(
            "the model repository is required: --model-repository DIR, "
            "CNN_SERVING_MODELS__REPOSITORY or models.repository in the settings file"
        )
    try:
        check_repository(repository)
    except StartupError as exc:
        raise SystemExit(f"error: {exc}") from None


def parse_args(argv: list[str] | None = None) -> Settings:
    """The effective settings, with logging configured at their level."""
    settings = load_settings(argv).settings
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
