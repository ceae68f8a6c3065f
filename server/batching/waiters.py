"""How an event-loop caller waits for its rows: one wake-up of the loop per batch.

A ``concurrent.futures.Future`` awaited through ``asyncio.wrap_future`` costs a
``call_soon_threadsafe`` (a write to the loop's self-pipe, an epoll wake-up and a
callback) for every request: a batch of eight woke the loop eight times. A
``LoopWaiter`` is an ``asyncio.Future`` of the caller's loop; the worker thread
collects a batch's answers in a ``Settlement`` and hands them to each loop with one
``call_soon_threadsafe``. ``cancel()`` keeps ``Future.cancel``'s meaning for the data
plane: True when the request was still queued, so it is withdrawn and never computed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import Any, Protocol


class Waiter(Protocol):
    """What the data plane awaits: the rows, or the batch's error."""

    def __await__(self) -> Generator[Any, None, Any]: ...

    def cancel(self) -> bool:
        """Withdraw the request; True when it was still queued (never computed)."""
        ...


class LoopWaiter:
    """A request's answer as an ``asyncio.Future`` of the loop that submitted it."""

    __slots__ = ("future", "loop", "request", "_withdraw", "_withdrawn")

    def __init__(self, withdraw: Callable[[Any], bool]) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = self.loop.create_future()
        # The batcher's: True when it took ``request`` (its queued entry, set once queued)
        # out while still queued. A bound method and a slot, not a closure per request.
        self._withdraw = withdraw
        self.request: Any = None
        self._withdrawn: bool | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self.future.__await__())
        except asyncio.CancelledError:
            self.cancel()  # at once: a worker must not pick up a request nobody awaits
            raise

    def cancel(self) -> bool:
        if self._withdrawn is None:
            self._withdrawn = self.request is not None and self._withdraw(self.request)
        self.future.cancel()
        return self._withdrawn

    def cancelled(self) -> bool:
        """Read from a worker thread: the caller gave up (its withdrawal may be on its way)."""
        return self.future.cancelled()


class FutureWaiter:
    """A ``concurrent.futures.Future`` seen as a ``Waiter`` (the ensemble's fan-out)."""

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future

    def __await__(self) -> Generator[Any, None, Any]:
        return (yield from asyncio.wrap_future(self.future).__await__())

    def cancel(self) -> bool:
        return self.future.cancel()


def _settle(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the loop: complete each future its caller still awaits."""
    for future, value, error in answers:
        if future.done():
            continue  # cancelled meanwhile
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


Answer = concurrent.futures.Future[Any] | LoopWaiter  # where a queued request's rows go


def claim(answer: Answer) -> bool:
    """Under the batcher's lock, as the request leaves the queue for computing: whether
    its caller still waits (a thread's future can no longer be cancelled after this)."""
    if isinstance(answer, LoopWaiter):
        return not answer.cancelled()
    return answer.set_running_or_notify_cancel()


def fail(answer: Answer, error: BaseException) -> bool:
    """Outside the lock: give ``error`` to a caller nobody answered yet; whether it got it."""
    if isinstance(answer, LoopWaiter):
        if answer.cancelled():
            return False
        settlement = Settlement()
        settlement.add(answer, None, error)
        settlement.send()
        return True
    try:
        if answer.cancelled():
            return False
        if not (answer.running() or answer.set_running_or_notify_cancel()):
            return False  # cancelled meanwhile
        answer.set_exception(error)
    except concurrent.futures.InvalidStateError:
        return False  # answered meanwhile
    return True


class Settlement:
    """One batch's answers, gathered on a worker thread and sent once per event loop."""

    __slots__ = ("_loops",)

    def __init__(self) -> None:
        self._loops: dict[asyncio.AbstractEventLoop, list[Any]] = {}

    def add(self, answer: Answer, value: Any, error: BaseException | None = None) -> None:
        """A thread's future is answered at once; a loop's waits for ``send``."""
        if isinstance(answer, LoopWaiter):
            self._loops.setdefault(answer.loop, []).append((answer.future, value, error))
        else:
            answer.set_result(value)

    def send(self) -> None:
        for loop, answers in self._loops.items():
            try:
                loop.call_soon_threadsafe(_settle, answers)
            except RuntimeError:  # the loop is closed: nobody is left to answer
                pass
        self._loops.clear()
