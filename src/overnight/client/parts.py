"""Driving one part from its file to its collected results: upload, create the batch, watch it, collect
its output and error files into the index the moment it ends, and give every line the batch left without
a result a line of its own (`batch_expired`, `batch_cancelled`, the refused batch's error).

Every step is recorded in the state file before the next one starts, so a run stopped anywhere picks up
at the same step; the server objects it already made are found again rather than made twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import openai
from openai.types import Batch

from overnight.client import state as job_state
from overnight.client.api import BatchApi, OffsetMismatch, describe, is_transient
from overnight.client.index import LineIndex, Recorded
from overnight.client.outcomes import (
    BATCH_CANCELLED,
    BATCH_EXPIRED,
    NO_RESULT,
    failed_batch_code,
    not_run_line,
)
from overnight.client.progress import ProgressView, Tally
from overnight.client.state import JobState, PartState
from overnight.client.words import plural
from overnight.domain.results import NOT_RUN_MESSAGES

_DRAIN_TRIES = 20
_READS_PER_POLL = 20
_DRAIN_PAUSE_S = 0.25


@dataclass(slots=True)
class JobContext:
    api: BatchApi
    state: JobState
    state_path: Path
    index: LineIndex
    work_dir: Path
    tally: Tally
    view: ProgressView
    input_name: str
    poll_interval_s: float
    stream_out: BinaryIO | None  # --stream: where successes go as they arrive
    stream_supported: bool | None = None  # does the server have partial results? None: not known yet
    progress_supported: bool | None = None  # and Overnight's progress extension?
    upload_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))
    download_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

    def save(self) -> None:
        job_state.save(self.state_path, self.state)

    def record(self, part: PartState, lines: list[bytes]) -> Recorded:
        recorded = self.index.record(part.name, lines, keep_successes=self.stream_out is not None)
        self.tally.succeeded_collected += recorded.succeeded
        self.tally.failed_collected += recorded.failed
        if self.stream_out is not None and recorded.new_successes:
            self.stream_out.write(b"".join(line + b"\n" for line in recorded.new_successes))
            self.stream_out.flush()
        return recorded


async def drive(ctx: JobContext, part: PartState) -> None:
    """Take `part` as far as it goes: collected."""
    if part.collected:
        return
    if part.batch_id is None:
        await _submit(ctx, part)
    batch = await _watch(ctx, part)
    async with ctx.download_slots:
        await _collect(ctx, part, batch)


async def _submit(ctx: JobContext, part: PartState) -> None:
    state = ctx.state
    if part.file_id is None:
        async with ctx.upload_slots:
            filename = f"{Path(ctx.input_name).stem}.{part.name}.jsonl"
            key = part.idempotency_key(state.job_id, "file")
            part.file_id = await ctx.api.upload(ctx.work_dir / part.file_name, filename, key)
        ctx.save()
    mine = {"overnight_job": state.job_id, "overnight_part": part.name}
    batch = None
    if part.create_sent:  # an earlier run may have made it and stopped before it could say so
        batch = await ctx.api.find_batch(mine, since=state.created_at - 600)
    if batch is None:
        part.create_sent = True
        ctx.save()
        metadata = {**mine, "overnight_input": ctx.input_name[-512:]}
        key = part.idempotency_key(state.job_id, "batch")
        batch = await ctx.api.create_batch(
            part.file_id, part.endpoint, state.completion_window, metadata, key
        )
    part.batch_id = batch.id
    part.status = batch.status
    ctx.save()
    ctx.view.note(f"{part.name}: {plural(part.lines, 'line')} of {part.model} submitted as {batch.id}")


async def _watch(ctx: JobContext, part: PartState) -> Batch:
    """Poll the part's batch until it ends, reading its finished lines as it runs where it can."""
    assert part.batch_id is not None
    streamed_ok = ctx.index.results_of(part.name)[0]
    ctx.tally.running += 1
    try:
        while True:
            batch = await ctx.api.retrieve(part.batch_id)
            if batch.status != part.status:
                part.status = batch.status
                ctx.save()
            ended = batch.status in job_state.TERMINAL
            if not ended and ctx.stream_out is not None and ctx.stream_supported is not False:
                file_id = await _running_output(ctx, part, batch)
                if file_id is not None:
                    streamed_ok += await _read_running(ctx, part, file_id)
            counts = batch.request_counts
            if counts is not None:
                completed = max(0, counts.completed - streamed_ok)
                ctx.tally.set_live(part.name, completed, counts.failed, retry=part.round > 0)
            if ended:
                return batch
            await asyncio.sleep(ctx.poll_interval_s)
    finally:
        ctx.tally.running -= 1


async def _running_output(ctx: JobContext, part: PartState, batch: Batch) -> str | None:
    """The output file a running batch is writing, where the server says: on the Batch (Doubleword), or
    in Overnight's progress extension (`partial_results`); None where neither does."""
    if batch.output_file_id:
        return batch.output_file_id
    if ctx.progress_supported is False:
        return None
    try:
        supported, file_id = await ctx.api.partial_result_ids(batch.id)
    except openai.APIError:
        return None  # a passing fault: ask again at the next poll
    ctx.progress_supported = supported  # without the extension, never asked again
    return file_id


async def _read_running(ctx: JobContext, part: PartState, file_id: str) -> int:
    """Read the lines a running batch has finished since the last read; the successes among them."""
    succeeded = 0

    def sink(lines: list[bytes]) -> None:
        nonlocal succeeded
        succeeded += ctx.record(part, lines).succeeded

    if part.stream_file_id not in (None, file_id):
        part.stream_offset = 0  # another file than before: its lines count from its own start
    part.stream_file_id = file_id
    for _ in range(_READS_PER_POLL):  # a server may cut an answer short (Overnight: 8 MiB)
        try:
            answer = await ctx.api.read_from(file_id, part.stream_offset, sink)
        except openai.NotFoundError:
            return succeeded  # not there yet (Doubleword answers 404 before the first line)
        except OffsetMismatch as error:
            _no_partial_results(ctx, f"it did not honour the offset ({error})")
            return succeeded
        except openai.APIError as error:
            if not is_transient(error):
                _no_partial_results(ctx, describe(error))
            return succeeded
        if answer is None:
            _no_partial_results(ctx, "no X-Incomplete header")
            return succeeded
        if ctx.stream_supported is None:
            ctx.stream_supported = True
            ctx.view.note("the server has partial results (X-Incomplete): results are written as they arrive")
        if answer.next_offset == part.stream_offset:
            break
        part.stream_offset = answer.next_offset
        ctx.save()
        if not answer.incomplete:
            break
    return succeeded


def _no_partial_results(ctx: JobContext, why: str) -> None:
    if ctx.stream_supported is not False:
        ctx.stream_supported = False
        ctx.view.note(f"no partial results from this server ({why}): each part's results come when it ends")


async def _collect(ctx: JobContext, part: PartState, batch: Batch) -> None:
    ctx.tally.drop_live(part.name)
    if batch.output_file_id:
        streamed = part.stream_offset > 0 and part.stream_file_id == batch.output_file_id
        drained = streamed and await _drain(ctx, part, batch.output_file_id)
        if not drained:
            await _download(ctx, part, batch.output_file_id)
    if batch.error_file_id:
        await _download(ctx, part, batch.error_file_id)
    _fill_unanswered(ctx, part, batch)
    part.succeeded, part.failed = ctx.index.results_of(part.name)
    part.status = batch.status
    part.collected = True
    ctx.save()
    ctx.view.note(
        f"{part.name}: batch {batch.id} {batch.status}: {part.succeeded:,} succeeded, {part.failed:,} failed"
    )


async def _drain(ctx: JobContext, part: PartState, file_id: str) -> bool:
    """Read the rest of an ended batch's output file from where streaming stopped; False if it can't."""

    def sink(lines: list[bytes]) -> None:
        ctx.record(part, lines)

    for _ in range(_DRAIN_TRIES):
        try:
            answer = await ctx.api.read_from(file_id, part.stream_offset, sink)
        except (OffsetMismatch, openai.APIError):
            return False
        if answer is None:
            return False
        part.stream_offset = answer.next_offset
        if not answer.incomplete:
            return True
        if not answer.lines:
            await asyncio.sleep(_DRAIN_PAUSE_S)
    return False


async def _download(ctx: JobContext, part: PartState, file_id: str) -> None:
    async def read_all() -> None:
        async for lines in ctx.api.lines(file_id):
            ctx.record(part, lines)

    await ctx.api.patiently(f"downloading {file_id}", read_all)


def _fill_unanswered(ctx: JobContext, part: PartState, batch: Batch) -> None:
    """A line of its own for every line of the part that its batch gave no result."""
    unanswered = ctx.index.unanswered(part.name)
    if not unanswered:
        return
    code, message = _why_unanswered(batch)
    by_line: dict[int, tuple[str, str]] = {}
    if batch.status == "failed":
        ctx.view.note(f"{part.name}: the server refused batch {batch.id}: {message}")
        for error in (batch.errors.data if batch.errors and batch.errors.data else [])[:1000]:
            line_no = ctx.index.line_of_part(part.name, error.line) if error.line else None
            if line_no is not None:
                text = f"{error.code}: {error.message}" if error.code else str(error.message)
                by_line[line_no] = (failed_batch_code(error.code), text)
    lines = []
    for line_no, custom_id in unanswered:
        line_code, line_message = by_line.get(line_no, (code, message))
        lines.append(not_run_line(custom_id, line_code, line_message))
    for start in range(0, len(lines), 5000):
        ctx.record(part, lines[start : start + 5000])


def _why_unanswered(batch: Batch) -> tuple[str, str]:
    if batch.status == "expired":
        return BATCH_EXPIRED, NOT_RUN_MESSAGES[BATCH_EXPIRED]
    if batch.status == "cancelled":
        return BATCH_CANCELLED, NOT_RUN_MESSAGES[BATCH_CANCELLED]
    if batch.status == "failed":
        errors = [error for error in (batch.errors.data if batch.errors and batch.errors.data else [])]
        first = next((error for error in errors if error.line is None), errors[0] if errors else None)
        if first is None:
            return failed_batch_code(None), "The batch failed; the server gave no reason."
        text = f"{first.code}: {first.message}" if first.code else str(first.message)
        hint = " (--max-lines, --max-bytes and --max-embedding-inputs set the parts' size)"
        return failed_batch_code(first.code), text + (hint if first.code == "too_many_tasks" else "")
    return NO_RESULT, "The batch ended without a result for this request."
