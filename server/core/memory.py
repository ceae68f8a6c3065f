"""Giving memory back after large requests (glibc's malloc keeps freed memory).

After a burst of large tensors or images the server's RSS floor stayed up
(210 -> 410 MB; a cancel storm of 12 MP images, 3.2 -> 4.2 GB): glibc keeps
freed chunks in its arenas, one arena per thread that allocated, for reuse.
Two measures, both glibc-only and skipped elsewhere:

- ``mallopt(M_ARENA_MAX, 2)`` at start-up: worker threads share two arenas
  instead of up to 8 per core, so freed memory is not scattered where only
  one thread would reuse it;
- a daemon thread that, while RSS is ``slack_mib`` over what it was once the
  models were loaded, calls ``malloc_trim(0)``, which returns the free pages
  of every arena to the kernel. It reads /proc/self/statm once an
  ``interval_s``: nothing on the request path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

from server.settings.runtime import MemorySettings

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc malloc.h
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc only: musl has neither)
    except (OSError, AttributeError):
        return None
    return libc


def rss_mib() -> float:
    """This process's resident memory (second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


class MemoryTrimmer:
    def __init__(self, opts: MemorySettings | None = None) -> None:
        self.opts = opts or MemorySettings()
        self.trims = 0
        self._libc = _libc()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._libc is None:
            log.info("not glibc: no arena limit, no trimming")
            return
        if self.opts.malloc_arena_max > 0:
            self._libc.mallopt(M_ARENA_MAX, self.opts.malloc_arena_max)
        if self.opts.malloc_trim_mib > 0:
            self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        """Trim while RSS stays ``slack_mib`` over the start-up floor: a trim costs about
        a millisecond, once a second at most, and frees what no live object holds."""
        floor = rss_mib()
        while not self._stop.wait(self.opts.trim_interval_s):
            if rss_mib() - floor > self.opts.malloc_trim_mib:
                self._libc.malloc_trim(0)  # type: ignore[union-attr]
                self.trims += 1
