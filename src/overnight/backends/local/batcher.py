"""Dynamic micro-batching: many concurrent requests, one model call.

Callers `submit` a list of items each and await their results. One worker takes every pending
request (whole requests, up to `max_items` items, and always at least one request), runs the
blocking `run` function once over all their items on its own thread, and hands each caller its
slice. There is no timer: while one group runs, the next one gathers, so an idle model answers a
lone request at once and a busy one gets groups as large as the load makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger("overnight.local")

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher was closed before this request ran."""


class MicroBatcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Sequence[R]], *, max_items: int, name: str) -> None:
        self._run = run
        self._max_items = max(1, max_items)
        self._name = name
        self._pending: deque[tuple[list[T], asyncio.Future[list[R]]]] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self.groups = 0  # calls of `run`, for tests and metrics
        self.items = 0

    async def submit(self, items: list[T]) -> list[R]:
        """The results for `items`, in order, once a group holding them has run."""
        if self._closed:
            raise BatcherClosed(f"{self._name} is closed")
        if self._worker is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            self._worker = asyncio.create_task(self._work(), name=f"batcher {self._name}")
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Stop the worker; requests still waiting fail with BatcherClosed. A group already on the
        thread finishes there, unobserved."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(BatcherClosed(f"{self._name} was closed"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _take(self) -> list[tuple[list[T], asyncio.Future[list[R]]]]:
        group: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        count = 0
        while self._pending:
            items, future = self._pending[0]
            if future.done():  # its caller gave up (cancelled): don't compute it
                self._pending.popleft()
                continue
            if group and count + len(items) > self._max_items:
                break
            self._pending.popleft()
            group.append((items, future))
            count += len(items)
        return group

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = self._take()
            if not group:
                self._wake.clear()
                await self._wake.wait()
                continue
            flat = [item for items, _ in group for item in items]
            self.groups += 1
            self.items += len(flat)
            try:
                results = await loop.run_in_executor(self._executor, self._run, flat)
            except asyncio.CancelledError:
                for _, future in group:
                    if not future.done():
                        future.set_exception(BatcherClosed(f"{self._name} was closed"))
                raise
            except Exception as exc:
                log.exception("%s: a model call failed", self._name)
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for items, future in group:
                end = start + len(items)
                if not future.done():
                    future.set_result(list(results[start:end]))
                start = end
