"""Group commit: finished results are buffered and written together every few milliseconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType

from overnight.domain.models import ResultRow
from overnight.engine.spool import ResultSpool, record_results
from overnight.engine.waiting import wait_event
from overnight.store.base import MetadataStore

log = logging.getLogger("overnight.engine")
FIRST_RETRY_S, LAST_RETRY_S = 0.1, 5.0


class ResultRecorder:
    """Collects result rows of one batch and records them in groups.

    A crash loses at most the rows of one flush interval; those lines simply run again. With a spool,
    each group is also copied into the batch's result files once recorded.
    """

    def __init__(
        self,
        store: MetadataStore,
        batch_id: str,
        interval_s: float,
        max_pending: int = 2000,
        on_flush: Callable[[], None] = lambda: None,
        spool: ResultSpool | None = None,
    ) -> None:
        self._on_flush = on_flush
        self._spool = spool
        self._store = store
        self._batch_id = batch_id
        self._interval = interval_s
        self._max_pending = max_pending
        self._pending: list[ResultRow] = []
        self._wanted = asyncio.Event()
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False

    def add(self, row: ResultRow) -> None:
        self._pending.append(row)
        if len(self._pending) >= self._max_pending:
            self._wanted.set()

    async def flush(self) -> None:
        """Record what is pending; while the store does not answer, keep the rows and try again
        (recording is insert-if-absent, so a try whose answer was lost costs nothing)."""
        async with self._lock:
            rows, self._pending = self._pending, []
            self._wanted.clear()
            delay = FIRST_RETRY_S
            while rows:
                try:
                    await record_results(self._store, self._batch_id, rows, self._spool)
                except Exception as exc:
                    log.warning(
                        "cannot record %d result(s) of batch %s (%s: %s); trying again in %.1f s",
                        len(rows),
                        self._batch_id,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, LAST_RETRY_S)
                    continue
                self._on_flush()
                return

    async def _flush_periodically(self) -> None:
        while not self._closing:
            await wait_event(self._wanted, self._interval)
            await self.flush()

    async def __aenter__(self) -> ResultRecorder:
        self._flusher = asyncio.create_task(self._flush_periodically())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Flush what is left. The flusher is told to end rather than cancelled, so a flush under way
        is never interrupted (its rows could be recorded but not copied to the spool)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            self._closing = True
            self._wanted.set()
            try:
                await flusher  # it finishes the flush under way, flushes once more, and ends
            except BaseException:
                flusher.cancel()  # this task is being cancelled, or the flusher failed
                raise
        await self.flush()
