"""`overnight run`: validate and run a JSONL file against the configured backends, without a server."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, TextIO

import msgspec

from overnight.backends.router import Router
from overnight.blobs.base import split_lines
from overnight.domain.clock import SystemClock
from overnight.domain.ids import request_line_id
from overnight.domain.models import ResultRow
from overnight.domain.validation import BatchValidator, ValidationResult, is_blank
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler, Feed

EXIT_ALL_SUCCEEDED = 0
EXIT_SOME_FAILED = 1
EXIT_INVALID_INPUT = 2
_OFFLINE_BATCH = "batch_offline"


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
    def __init__(self, output: BinaryIO, errors: BinaryIO) -> None:
        self._output = output
        self._errors = errors
        self.succeeded = 0
        self.failed = 0

    def __call__(self, row: ResultRow) -> None:
        if row.kind.in_output_file:
            self.succeeded += 1
            self._output.write(row.line + b"\n")
        else:
            self.failed += 1
            self._errors.write(row.line + b"\n")


def report_invalid(result: ValidationResult, stream: TextIO) -> None:
    for error in result.errors:
        where = f"line {error.line}" if error.line is not None else "file"
        print(f"{where}: {error.code}: {error.message}", file=stream)


async def run_file(
    router: Router, retry: RetryPolicy, input_path: Path, output_path: Path, errors_path: Path
) -> int:
    endpoint = await guess_endpoint(input_path)
    result = await validate_file(input_path, endpoint, router)
    if not result.ok:
        report_invalid(result, sys.stderr)
        return EXIT_INVALID_INPUT
    backend = router.backend_for(result.model or "")
    assert backend is not None  # validation checked the model is served
    with output_path.open("wb") as output, errors_path.open("wb") as errors:
        sink = _FileSink(output, errors)
        scheduler = BackendScheduler(backend, SystemClock(), retry=retry)
        feed = Feed(
            batch_id=_OFFLINE_BATCH,
            project="offline",
            deadline=0,
            endpoint=endpoint,
            lines=split_lines(_chunks(input_path)),
            line_id=lambda line_no: request_line_id(_OFFLINE_BATCH, line_no),
            sink=sink,
        )
        try:
            await scheduler.run(feed)
        finally:
            await scheduler.close()
    print(f"{sink.succeeded} succeeded, {sink.failed} failed", file=sys.stderr)
    return EXIT_ALL_SUCCEEDED if sink.failed == 0 else EXIT_SOME_FAILED
