"""The building block of the settings tree: a frozen section whose fields carry their docs.

Every setting is a field of a ``Section`` with one default and one docstring (the
attribute docstring under it). The command line, the ``CNN_SERVING_*`` environment
and the settings file are all generated from these fields (``server/settings/sources.py``),
so a new limit is one field here and nothing else.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """One group of settings (listeners, HTTP, images, ...): immutable once loaded."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def setting(
    default: Any,
    *,
    flag: str | None = None,
    negate: bool = False,
    metavar: str | None = None,
    nargs: str | None = None,
    **constraints: Any,
) -> Any:
    """A field with its command-line spelling.

    ``flag`` keeps a historical flag name (``--grpc-port``); without it the flag is
    ``--<section>-<field>`` with dashes. ``negate`` makes a True-by-default boolean a
    switch that turns it off (``--no-warmup``). ``nargs="*"`` makes a list flag take
    space-separated values (``--models a b``) instead of repeating. ``constraints`` are
    pydantic's (``ge``, ``le``, ``gt``...), checked whichever source the value came from.
    """
    named = (("flag", flag), ("negate", negate), ("metavar", metavar), ("nargs", nargs))
    extra = {k: v for k, v in named if v}
    return Field(default, json_schema_extra=extra or None, **constraints)
