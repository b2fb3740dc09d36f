"""Running the lines of a validated input against a backend, a window of requests at a time.

Shared by the server's engine and the offline `overnight run` command.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import msgspec

from overnight.backends.base import Backend
from overnight.domain.models import ResultRow
from overnight.domain.results import response_row
from overnight.domain.validation import is_blank, parse_request

log = logging.getLogger("overnight.engine")

Sink = Callable[[ResultRow], None]
LineId = Callable[[int], str]

_INTERNAL_ERROR = msgspec.json.encode(
    {
        "error": {
            "message": "Overnight could not run this request because of an internal error.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
)


async def run_one(
    backend: Backend, endpoint: str, line_no: int, raw: bytes, line_id: LineId, sink: Sink
) -> None:
    """Send one input line and hand its result row to `sink`; never raises (but may be cancelled)."""
    custom_id = ""
    try:
        request = parse_request(raw)
        custom_id = request.custom_id
        answer = await backend.send(endpoint, request.body)
        row = response_row(
            line_no, line_id(line_no), custom_id, answer.status, answer.request_id, answer.body
        )
    except Exception:
        log.exception("internal error running line %d", line_no)
        row = response_row(line_no, line_id(line_no), custom_id, 500, "", _INTERNAL_ERROR)
    sink(row)


async def run_lines(
    lines: AsyncIterator[tuple[int, bytes]],
    *,
    backend: Backend,
    endpoint: str,
    line_id: LineId,
    sink: Sink,
    stop: asyncio.Event,
    skip: Callable[[int], bool] = lambda _line_no: False,
) -> bool:
    """Run every non-blank, non-skipped line; True when all ran, False when `stop` cut it short.

    The backend bounds what is in flight upstream; this call keeps twice that many requests
    started, so retries sleeping inside the backend do not starve it. When `stop` is set,
    requests in flight are abandoned (their lines stay without a result).
    """
    window = asyncio.Semaphore(2 * backend.max_concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    def finished(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        window.release()

    try:
        async for line_no, raw in lines:
            if is_blank(raw) or skip(line_no):
                continue
            if not await _acquire_unless_stopped(window, stop):
                return False
            task = asyncio.create_task(run_one(backend, endpoint, line_no, raw, line_id, sink))
            in_flight.add(task)
            task.add_done_callback(finished)
        return await _drain(in_flight, stop)
    finally:
        for task in list(in_flight):
            task.cancel()
        if in_flight:
            await asyncio.gather(*in_flight, return_exceptions=True)


async def _acquire_unless_stopped(window: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    if stop.is_set():
        return False
    if not window.locked():
        await window.acquire()
        return True
    acquire = asyncio.ensure_future(window.acquire())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait((acquire, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if acquire.done() and not acquire.cancelled():
        if stop.is_set():
            window.release()
            return False
        return True
    acquire.cancel()
    return False


async def _drain(in_flight: set[asyncio.Task[None]], stop: asyncio.Event) -> bool:
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while in_flight and not stop.is_set():
            await asyncio.wait((*in_flight, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    return not stop.is_set()
