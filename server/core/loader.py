"""Repository work off the event loop that nobody has to wait for if it never returns.

Reading a repository entry and building its sessions can block in the kernel (a
FIFO, a hung network mount) or inside the runtime. Each job therefore runs on its own
daemon thread: the caller waits at most the load timeout, an unload or a shutdown
can abandon it at once, and the interpreter exits without joining it (a
``ThreadPoolExecutor`` worker is joined at exit, which is how one stuck read used to
keep SIGTERM from ending the process). Jobs of different models run side by side, so
one stuck load never holds up another. A job that takes a ``Stop`` argument is told
when its caller left and ends at its next step (the build checks it between
instances and warm-up runs) instead of computing for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from server.core.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class Abandoned(Unavailable):
    """The job's caller stopped waiting (unload, shutdown): its result will be discarded."""


class Stop(threading.Event):
    """Set when nobody waits for the job any more; ``check()`` between steps."""

    def check(self) -> None:
        if self.is_set():
            raise Abandoned("the load was abandoned")


class Loader:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._stops: dict[asyncio.Future[Any], Stop] = {}
        self._waiting: dict[str, set[asyncio.Future[Any]]] = {}
        self.closed = False

    async def run(
        self,
        key: str,
        fn: Callable[..., T],
        *args: Any,
        discard: Callable[[T], None] | None = None,
        timeout_s: float | None = None,
        stop: bool = False,
    ) -> T:
        """``fn(*args)`` on a daemon thread, for ``key`` (a model name); Unavailable after
        the timeout or when ``abandon(key)`` is called. A result that arrives after the
        caller left goes to ``discard`` (close the sessions it built). ``stop=True`` passes
        ``fn`` a ``Stop`` as its last argument."""
        if self.closed:
            raise Unavailable("server is shutting down: no model loads")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        self._waiting.setdefault(key, set()).add(waiter)
        limit = self.timeout_s if timeout_s is None else timeout_s
        token = self._stops[waiter] = Stop()
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                _start(loop, waiter, fn, (*args, token) if stop else args, discard)
                return await asyncio.shield(waiter)
        except TimeoutError:
            if not timer.expired():
                raise  # the job's own TimeoutError, not ours
            raise Unavailable(
                f"loading '{key}' took longer than {limit:g} s (repository setting "
                "load_timeout_s); the load was abandoned"
            ) from None
        finally:
            self._waiting.get(key, set()).discard(waiter)
            if not waiter.done():
                waiter.cancel()  # the thread sees it and discards what it made
            if waiter.cancelled() or waiter.exception() is not None:
                token.set()  # a build still running stops at its next step
            del self._stops[waiter]

    def busy(self, key: str) -> bool:
        """A job for ``key`` is running."""
        return any(not w.done() for w in self._waiting.get(key, ()))

    def abandon(self, key: str, why: str) -> None:
        """Stop waiting for ``key``'s jobs: their callers get ``Abandoned(why)`` now."""
        for waiter in list(self._waiting.get(key, ())):
            if not waiter.done():
                self._stops[waiter].set()
                waiter.set_exception(Abandoned(why))

    def close(self) -> None:
        """Refuse new jobs and abandon every running one."""
        self.closed = True
        for key in list(self._waiting):
            self.abandon(key, "server is shutting down")


def _start(
    loop: asyncio.AbstractEventLoop,
    waiter: asyncio.Future[Any],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    discard: Callable[[Any], None] | None,
) -> None:
    def deliver(ok: bool, value: Any) -> None:
        if waiter.done():  # abandoned or timed out: nobody will use what was built
            if ok and discard is not None:
                threading.Thread(target=_quietly, args=(discard, value), daemon=True).start()
            return
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)

    def body() -> None:
        try:
            result: tuple[bool, Any] = (True, fn(*args))
        except BaseException as exc:  # delivered to the caller, who maps it
            result = (False, exc)
        try:
            loop.call_soon_threadsafe(deliver, *result)
        except RuntimeError:  # the loop is closed: the process is ending
            pass

    threading.Thread(target=body, name="model-loader", daemon=True).start()


def _quietly(fn: Callable[[Any], None], value: Any) -> None:
    try:
        fn(value)
    except Exception:
        log.exception("discarding an abandoned load failed")
