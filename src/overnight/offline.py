"""`overnight run`: validate and run a JSONL file against the configured backends, without a server."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, TextIO

import msgspec

from overnight.backends.base import Attempt
from overnight.backends.router import Router
from overnight.domain.ids import request_line_id
from overnight.domain.lines import split_lines
from overnight.domain.models import ResultRow
from overnight.domain.results import BATCH_EXPIRED, not_run_row
from overnight.domain.validation import BatchValidator, ValidationResult, is_blank, parse_request
from overnight.engine.digest import describe_failure
from overnight.engine.feed import Feed
from overnight.wiring import Offline

EXIT_ALL_SUCCEEDED = 0
EXIT_SOME_FAILED = 1
EXIT_INVALID_INPUT = 2
_OFFLINE_BATCH = "batch_offline"
PROGRESS_EVERY_S = 5.0


async def _chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(size):
            yield chunk
            await asyncio.sleep(0)


class _Probe(msgspec.Struct):
    url: str | None = None


async def guess_endpoint(path: Path) -> str:
    """The `url` of the first readable line; the validator then holds every line to it."""
    async for _line_no, raw in split_lines(_chunks(path)):
        if is_blank(raw):
            continue
        try:
            url = msgspec.json.decode(raw, type=_Probe).url
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if url:
            return url
    return "/v1/chat/completions"


async def validate_file(path: Path, endpoint: str, router: Router) -> ValidationResult:
    validator = BatchValidator(endpoint, router.serves)
    async for line_no, raw in split_lines(_chunks(path)):
        validator.check_line(line_no, raw)
    return validator.finish()


class _FileSink:
    """Writes each result to its file and remembers which lines have one (a bit per line)."""

    def __init__(self, output: BinaryIO, errors: BinaryIO) -> None:
        self._output = output
        self._errors = errors
        self._done = bytearray()
        self.succeeded = 0
        self.failed = 0

    def __call__(self, row: ResultRow) -> None:
        byte, bit = divmod(row.line_no, 8)
        if byte >= len(self._done):
            self._done.extend(bytes(byte + 1 - len(self._done) + 4096))
        self._done[byte] |= 1 << bit
        if row.kind.in_output_file:
            self.succeeded += 1
            self._output.write(row.line + b"\n")
        else:
            self.failed += 1
            self._errors.write(row.line + b"\n")

    def has(self, line_no: int) -> bool:
        byte, bit = divmod(line_no, 8)
        return byte < len(self._done) and bool(self._done[byte] & (1 << bit))


def report_invalid(result: ValidationResult, stream: TextIO) -> None:
    for error in result.errors:
        where = f"line {error.line}" if error.line is not None else "file"
        print(f"{where}: {error.code}: {error.message}", file=stream)


async def _report_progress(sink: _FileSink, total: int, every_s: float, stream: TextIO) -> None:
    """A line on `stream` every `every_s` while the run goes on."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        done = sink.succeeded + sink.failed
        elapsed = time.monotonic() - started
        print(
            f"overnight run: {done:,}/{total:,} done ({sink.succeeded:,} succeeded, {sink.failed:,} failed), "
            f"{done / elapsed:,.0f} req/s",
            file=stream,
            flush=True,
        )


async def _write_unfinished(
    input_path: Path, sink: _FileSink, errors: BinaryIO, last_failures: dict[int, Attempt]
) -> int:
    """Every line the run left without a result goes to the errors file as `batch_expired`."""
    count = 0
    async for line_no, raw in split_lines(_chunks(input_path)):
        if is_blank(raw) or sink.has(line_no):
            continue
        last = last_failures.get(line_no)
        detail = describe_failure(last) if last is not None else None
        custom_id = parse_request(raw).custom_id
        row = not_run_row(line_no, request_line_id(_OFFLINE_BATCH, line_no), custom_id, BATCH_EXPIRED, detail)
        errors.write(row.line + b"\n")
        count += 1
    return count


async def run_file(
    offline: Offline,
    input_path: Path,
    output_path: Path,
    errors_path: Path,
    *,
    timeout_s: float,
    progress_every_s: float = PROGRESS_EVERY_S,
    stream: TextIO = sys.stderr,
) -> int:
    """Run every line of `input_path` within `timeout_s`; lines still unfinished then go to the
    errors file as `batch_expired`. Returns the exit status."""
    endpoint = await guess_endpoint(input_path)
    result = await validate_file(input_path, endpoint, offline.router)
    if not result.ok:
        report_invalid(result, stream)
        return EXIT_INVALID_INPUT
    backend = offline.router.backend_for(result.model or "")
    assert backend is not None  # validation checked the model is served
    clock = offline.clock
    with output_path.open("wb") as output, errors_path.open("wb") as errors:
        sink = _FileSink(output, errors)
        scheduler = offline.scheduler(backend)
        feed = Feed(
            batch_id=_OFFLINE_BATCH,
            project="offline",
            deadline=int(clock.now() + timeout_s),
            endpoint=endpoint,
            lines=split_lines(_chunks(input_path)),
            line_id=lambda line_no: request_line_id(_OFFLINE_BATCH, line_no),
            sink=sink,
        )
        reporter = asyncio.create_task(_report_progress(sink, result.total, progress_every_s, stream))
        unfinished = 0
        try:
            async with asyncio.timeout(timeout_s):
                await scheduler.run(feed)
        except TimeoutError:
            unfinished = await _write_unfinished(input_path, sink, errors, feed.last_failures)
        finally:
            reporter.cancel()
            await scheduler.close()
    if unfinished:
        print(
            f"overnight run: the timeout of {timeout_s:g} s ran out; {unfinished:,} unfinished line(s) "
            f"went to {errors_path} as batch_expired (--timeout allows more time)",
            file=stream,
        )
    failed = sink.failed + unfinished
    print(f"{sink.succeeded} succeeded, {failed} failed", file=stream)
    return EXIT_ALL_SUCCEEDED if failed == 0 else EXIT_SOME_FAILED
