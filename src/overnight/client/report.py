"""The job's end: the results file in input order, the failures file, and the summary a person reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from overnight.client.index import LineIndex
from overnight.client.outcomes import NO_RESULT, not_run_line
from overnight.client.state import JobState, Summary
from overnight.client.words import plural
from overnight.domain.models import BatchError


def errors_path(output: Path) -> Path:
    """`RESULTS.errors.jsonl` beside `RESULTS.jsonl`."""
    return output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")


def write_results(index: LineIndex, output: Path) -> tuple[int, int]:
    """Write one line per input line to `output`, in input order, and the failures to the errors file
    beside it (only when there are any); each atomically. Returns (lines, failed)."""
    errors = errors_path(output)
    output_tmp = output.with_name(f".{output.name}.tmp")
    errors_tmp = errors.with_name(f".{errors.name}.tmp")
    written = failed = 0
    with output_tmp.open("wb") as out, errors_tmp.open("wb") as err:
        for custom_id, line, ok in index.in_order():
            if line is None:  # every part's collection gives each of its lines one; this is a safety net
                line = not_run_line(custom_id, NO_RESULT, "The job ended without a result for this request.")
            out.write(line + b"\n")
            written += 1
            if not ok:
                err.write(line + b"\n")
                failed += 1
        for handle in (out, err):
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(output_tmp, output)
    if failed:
        os.replace(errors_tmp, errors)
    else:
        errors_tmp.unlink()
        errors.unlink(missing_ok=True)  # a stale one from an earlier job
    return written, failed


def print_problems(problems: list[BatchError], more: bool, stream: TextIO) -> None:
    for problem in problems:
        where = f"line {problem.line}" if problem.line is not None else "file"
        print(f"{where}: {problem.code}: {problem.message}", file=stream)
    shown = f"the first {len(problems)} shown" if more else f"{len(problems)} in all"
    print(
        f"overnight submit: the input has problems ({shown}); nothing was submitted. Fix them and run again.",
        file=stream,
    )


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{seconds:.1f}s"


def print_summary(state: JobState, output: Path, stream: TextIO) -> None:
    summary = state.summary
    assert summary is not None
    print(
        f"overnight submit: finished in {_duration(summary.wall_s)} (job {state.job_id}, {state.base_url})",
        file=stream,
    )
    failed = f"{summary.failed:,} failed"
    if summary.failure_codes:
        failed += " (" + ", ".join(f"{code}: {count:,}" for code, count in summary.failure_codes[:5]) + ")"
    print(f"  lines:   {summary.total:,}: {summary.succeeded:,} succeeded, {failed}", file=stream)
    print(f"  tokens:  {summary.input_tokens:,} input, {summary.output_tokens:,} output", file=stream)
    retried = [part for part in state.parts if part.round > 0]
    if retried:
        rounds = max(part.round for part in retried)
        lines = sum(part.lines for part in retried)
        print(
            f"  retries: {plural(lines, 'line try', 'line tries')} in {plural(rounds, 'round')}", file=stream
        )
    print(f"  parts:   {len(state.parts)}", file=stream)
    for part in state.parts:
        print(
            f"    {part.name}  {part.lines:>9,} lines  {part.model}  {part.batch_id or '-'}  "
            f"{part.status or '-'}  {part.succeeded:,} ok, {part.failed:,} failed",
            file=stream,
        )
    print(f"  results: {output} ({plural(summary.total, 'line')}, in input order)", file=stream)
    if summary.failed:
        print(f"  failed:  {errors_path(output)} ({plural(summary.failed, 'line')})", file=stream)


def make_summary(index: LineIndex, wall_s: float) -> Summary:
    counts = index.counts()
    input_tokens, output_tokens = index.usage()
    return Summary(
        total=counts.total,
        succeeded=counts.succeeded,
        failed=counts.total - counts.succeeded,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        wall_s=wall_s,
        failure_codes=index.failure_codes(),
    )
