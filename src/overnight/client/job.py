"""`overnight submit INPUT.jsonl -o RESULTS.jsonl`: one command for a job of any size.

The job: validate and split the input (once), run every part as a batch, collect results as batches end,
retry what failed in a way worth retrying for up to `retries` rounds, then write the results in input
order. Beside the output it keeps a state file and a work folder (the parts and the index), so the same
command run again after Ctrl-C, a crash or a reboot picks up the same batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from overnight.client import state as job_state
from overnight.client.api import BatchApi, ClientError
from overnight.client.index import LineIndex
from overnight.client.parts import JobContext, drive
from overnight.client.plan import PartLimits, Plan, plan_input, write_retry_parts
from overnight.client.progress import ProgressView, Tally
from overnight.client.report import errors_path, make_summary, print_problems, print_summary, write_results
from overnight.client.state import InputFingerprint, JobState, PartState, StateError
from overnight.client.words import plural

EXIT_ALL_SUCCEEDED: Final = 0
EXIT_SOME_FAILED: Final = 1
EXIT_INVALID_INPUT: Final = 2
EXIT_INTERRUPTED: Final = 130
_REFRESH_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class SubmitOptions:
    input: Path
    output: Path
    base_url: str | None = None
    api_key: str | None = None
    retries: int = 3
    limits: PartLimits = field(default_factory=PartLimits)
    completion_window: str = "24h"
    stream: bool = False
    poll_interval_s: float = 5.0

    @property
    def state_path(self) -> Path:
        return self.output.with_name(f"{self.output.name}.overnight-state.json")

    @property
    def work_dir(self) -> Path:
        return self.output.with_name(f"{self.output.name}.overnight")


class JobError(Exception):
    """The job cannot start or go on, for a reason the message gives."""


def run_submit(options: SubmitOptions, stream: BinaryIO | None = None) -> int:
    """The exit status: 0 every line succeeded, 1 some failed for good, 2 the input is invalid."""
    try:
        api = BatchApi(options.base_url, options.api_key)
        opened = _open(options, api.base_url)  # before the event loop, so Ctrl-C stops a long check at once
        if isinstance(opened, int):
            return opened
        state, index = opened
        try:
            return asyncio.run(_submit(api, state, index, options, stream))
        finally:
            index.close()
    except (KeyboardInterrupt, asyncio.CancelledError):
        if options.state_path.exists():
            message = (
                "interrupted. Every result collected so far is kept; the batches go on running on the "
                "server. Run the same command again to continue."
            )
        else:
            message = "interrupted while checking the input; nothing was submitted."
        print(f"\novernight submit: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (JobError, ClientError, StateError) as error:
        print(f"overnight submit: error: {error}", file=sys.stderr)
        return EXIT_SOME_FAILED


def _open(options: SubmitOptions, base_url: str) -> int | tuple[JobState, LineIndex]:
    """The job to run: resumed from its state file, or new (the input checked and split); else the
    exit status of a job with nothing left to run."""
    state = job_state.load(options.state_path)
    if state is not None and state.finished:
        return _already_finished(state, options)
    if state is not None:
        return state, _resume(state, options, base_url)
    opened = _new_job(options, base_url)
    return EXIT_INVALID_INPUT if isinstance(opened, Plan) else opened


async def _submit(
    api: BatchApi, state: JobState, index: LineIndex, options: SubmitOptions, stream_out: BinaryIO | None
) -> int:
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):  # not on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await _run(api, state, index, options, stream_out)
    finally:
        await api.close()


def _already_finished(state: JobState, options: SubmitOptions) -> int:
    if not options.output.exists():
        raise JobError(
            f"this job finished earlier, but {options.output} is gone; remove {options.state_path} "
            "to run the input again"
        )
    print_summary(state, options.output, sys.stderr)
    assert state.summary is not None
    return EXIT_ALL_SUCCEEDED if state.summary.failed == 0 else EXIT_SOME_FAILED


def _clear_work_dir(folder: Path) -> None:
    """Remove what an earlier, unfinished planning left (only files this client writes there)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith("index.sqlite") or (path.suffix == ".jsonl" and path.name.startswith("r")):
            path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _new_job(options: SubmitOptions, base_url: str) -> Plan | tuple[JobState, LineIndex]:
    if not options.input.is_file():
        raise JobError(f"input file {str(options.input)!r} does not exist")
    _clear_work_dir(options.work_dir)
    options.work_dir.mkdir(parents=True, exist_ok=True)
    index = LineIndex(options.work_dir / "index.sqlite")
    stat = options.input.stat()
    print(f"overnight submit: checking {options.input} ({stat.st_size:,} bytes)", file=sys.stderr, flush=True)
    plan = plan_input(options.input, options.work_dir, options.limits, index)
    if not plan.ok:
        index.close()
        _clear_work_dir(options.work_dir)
        print_problems(plan.problems, plan.more_problems, sys.stderr)
        return plan
    limits = options.limits
    state = JobState(
        job_id=job_state.new_job_id(),
        created_at=job_state.now(),
        base_url=base_url,
        input=InputFingerprint(
            path=str(options.input.resolve()), size=plan.size, mtime_ns=stat.st_mtime_ns, sha256=plan.sha256
        ),
        total_lines=plan.total,
        completion_window=options.completion_window,
        max_lines=limits.max_lines,
        max_bytes=limits.max_bytes,
        max_embedding_inputs=limits.max_embedding_inputs,
        parts=[
            PartState(name=p.name, round=0, endpoint=p.endpoint, model=p.model, lines=p.lines, bytes=p.bytes)
            for p in plan.parts
        ],
    )
    job_state.save(options.state_path, state)
    print(
        f"overnight submit: {plural(plan.total, 'line')} in {plural(len(plan.parts), 'part')} of at most "
        f"{plural(limits.max_lines, 'line')} for {base_url} "
        f"(job {state.job_id}; state in {options.state_path})",
        file=sys.stderr,
        flush=True,
    )
    return state, index


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _resume(state: JobState, options: SubmitOptions, base_url: str) -> LineIndex:
    if base_url != state.base_url:
        raise JobError(
            f"this job's batches are on {state.base_url}, not {base_url}: pass --base-url {state.base_url}, "
            f"or remove {options.state_path} to start over"
        )
    if not options.input.is_file():
        raise JobError(f"input file {str(options.input)!r} does not exist")
    stat = options.input.stat()
    seen = state.input
    if (stat.st_size, stat.st_mtime_ns) != (seen.size, seen.mtime_ns):
        if stat.st_size != seen.size or _sha256(options.input) != seen.sha256:
            raise JobError(
                f"{options.input} changed since this job started; remove {options.state_path} to start over"
            )
        seen.mtime_ns = stat.st_mtime_ns
    index_path = options.work_dir / "index.sqlite"
    if not index_path.exists():
        raise JobError(f"{index_path} is gone; remove {options.state_path} to start over")
    collected = sum(part.collected for part in state.parts)
    print(
        f"overnight submit: resuming job {state.job_id}: {collected:,} of {plural(len(state.parts), 'part')} "
        "collected",
        file=sys.stderr,
        flush=True,
    )
    return LineIndex(index_path)


async def _run(
    api: BatchApi, state: JobState, index: LineIndex, options: SubmitOptions, stream_out: BinaryIO | None
) -> int:
    counts = index.counts()
    tally = Tally(counts.total, counts.succeeded, counts.failed)
    view = ProgressView(tally)
    api.on_wait = view.note
    ctx = JobContext(
        api=api,
        state=state,
        state_path=options.state_path,
        index=index,
        work_dir=options.work_dir,
        tally=tally,
        view=view,
        input_name=Path(state.input.path).name,  # as when the job began: the same requests every time
        poll_interval_s=options.poll_interval_s,
        stream_out=stream_out if options.stream else None,
    )
    refresher = asyncio.create_task(_refresh(view))
    ended = False
    try:
        await _rounds(ctx, options)
        ended = True
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        view.close(final=ended)  # an interrupted job's last counts would be stale: leave the bar as it was
    return _finish(ctx, options)


async def _refresh(view: ProgressView) -> None:
    while True:
        view.refresh()
        await asyncio.sleep(_REFRESH_S)


async def _rounds(ctx: JobContext, options: SubmitOptions) -> None:
    state = ctx.state
    while True:
        number = state.last_round
        ctx.tally.round = number
        pending = [part for part in state.round_parts(number) if not part.collected]
        if pending:
            await _run_parts(ctx, pending)
        if number >= options.retries or not _plan_retries(ctx, options, number + 1):
            return


async def _run_parts(ctx: JobContext, parts: list[PartState]) -> None:
    tasks = [asyncio.create_task(drive(ctx, part)) for part in parts]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _plan_retries(ctx: JobContext, options: SubmitOptions, number: int) -> bool:
    """Parts of retry round `number` for every line worth another try; False when there is none."""
    state = ctx.state
    groups = {part.name: (part.endpoint, part.model) for part in state.parts}
    limits = PartLimits(state.max_lines, state.max_bytes, state.max_embedding_inputs)
    retries = ((retry, *groups[retry.part]) for retry in ctx.index.retryable())
    parts = write_retry_parts(options.input, ctx.work_dir, f"r{number}", limits, retries, ctx.index)
    if not parts:
        return False
    state.parts.extend(
        PartState(name=p.name, round=number, endpoint=p.endpoint, model=p.model, lines=p.lines, bytes=p.bytes)
        for p in parts
    )
    ctx.save()
    lines = sum(part.lines for part in parts)
    ctx.view.note(
        f"retry round {number}: {plural(lines, 'line')} worth another try, in {plural(len(parts), 'part')}"
    )
    return True


def _finish(ctx: JobContext, options: SubmitOptions) -> int:
    state = ctx.state
    write_results(ctx.index, options.output)
    state.summary = make_summary(ctx.index, job_state.now() - state.created_at)
    state.finished = True
    ctx.save()
    ctx.index.close()
    shutil.rmtree(options.work_dir, ignore_errors=True)
    print_summary(state, options.output, sys.stderr)
    if state.summary.failed and not errors_path(options.output).exists():  # pragma: no cover - a safety net
        raise JobError("the failures file was not written")
    return EXIT_ALL_SUCCEEDED if state.summary.failed == 0 else EXIT_SOME_FAILED
