"""Triton's logging extension: read and change the running server's logging.

Triton switches each severity on or off (``log_info``, ``log_warning``, ``log_error``),
has a verbose level and two formats. Python's logging has one threshold per logger, so
the root logger's level is set to the lowest severity switched on (nothing below it is
even formatted) and a filter on the root handlers drops a severity switched off above it.
Verbose level 1 or more turns on DEBUG. The log file is where the root handlers write;
as in Triton it cannot be changed over the network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from server.core.errors import InvalidArgument, Unimplemented

U32_MAX = (1 << 32) - 1
FORMATS = ("default", "ISO8601")
_ISO8601 = logging.Formatter(
    "%(asctime)s %(levelname).1s %(process)d %(filename)s:%(lineno)d] %(message)s",
    datefmt="%Y-%m-%dT%H:%M:%SZ",
)
_ISO8601.converter = time.gmtime  # Triton's ISO8601 times are UTC


@dataclass(frozen=True)
class LogState:
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_verbose_level: int = 0
    log_format: str = "default"

    def allows(self, levelno: int) -> bool:
        if levelno < logging.INFO:
            return self.log_verbose_level > 0
        if levelno < logging.WARNING:
            return self.log_info
        if levelno < logging.ERROR:
            return self.log_warning
        return self.log_error

    def threshold(self) -> int:
        """The root logger's level: the lowest severity switched on."""
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
            if self.allows(level):
                return level
        return logging.CRITICAL + 1


class LogControl(logging.Filter):
    """The server's logging settings, applied to the root logger and its handlers."""

    def __init__(self, root: logging.Logger | None = None) -> None:
        super().__init__()
        self.root = root or logging.getLogger()
        level = self.root.getEffectiveLevel()
        self.state = LogState(
            log_info=level <= logging.INFO,
            log_warning=level <= logging.WARNING,
            log_error=level <= logging.ERROR,
            log_verbose_level=int(level <= logging.DEBUG),
        )
        self._formats: dict[logging.Handler, logging.Formatter | None] = {}  # "default"

    def filter(self, record: logging.LogRecord) -> bool:
        return self.state.allows(record.levelno)

    def describe(self) -> dict[str, bool | int | str]:
        files = [h.baseFilename for h in self.root.handlers if isinstance(h, logging.FileHandler)]
        return {"log_file": files[0] if files else "", **self.state.__dict__}

    def update(self, changes: Mapping[str, object]) -> dict[str, bool | int | str]:
        """Check every change, then apply them all; the settings after."""
        new: dict[str, object] = {}
        for key, value in changes.items():
            if value is None:  # Triton leaves a null setting unchanged
                continue
            new[key] = _checked(key, value)
        if not new:
            return self.describe()
        self.state = replace(self.state, **new)  # type: ignore[arg-type]
        self.root.setLevel(self.state.threshold())
        for handler in self.root.handlers:
            if handler not in self._formats:  # first change: nothing is touched before
                self._formats[handler] = handler.formatter
                handler.addFilter(self)
            iso = self.state.log_format == "ISO8601"
            handler.setFormatter(_ISO8601 if iso else self._formats.get(handler))
        return self.describe()

    def detach(self) -> None:
        """Undo ``update`` on the handlers it touched: their filter and formatter back."""
        for handler, formatter in self._formats.items():
            handler.removeFilter(self)
            handler.setFormatter(formatter)
        self._formats.clear()


def _checked(key: str, value: object) -> object:
    if key == "log_file":
        raise Unimplemented("log file location can not be updated through network protocol")
    if key in ("log_info", "log_warning", "log_error"):
        if not isinstance(value, bool):
            raise InvalidArgument(f"expect boolean for '{key}', got {value!r:.64}")
        return value
    if key == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U32_MAX:
            raise InvalidArgument(f"expect int32 for '{key}', got {value!r:.64}")
        return value
    if key == "log_format":
        if value not in FORMATS:
            raise InvalidArgument(
                f"invalid argument for log_format, got: {str(value)[:64]}; expected default "
                "or ISO8601"
            )
        return value
    known = "log_file, log_info, log_warning, log_error, log_verbose_level, log_format"
    raise InvalidArgument(f"unknown log setting '{key[:64]}'; known: {known}")
