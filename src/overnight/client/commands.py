"""The client's subcommands of `overnight`: `submit`, and `batches list|status|cancel|results`, so a user
needs no other tool. `--base-url` and `--api-key` default to `OPENAI_BASE_URL` and `OPENAI_API_KEY`, read
by the `openai` SDK as it always does."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from overnight.client.words import plural
from overnight.domain import limits
from overnight.domain.limits import parse_window

if TYPE_CHECKING:  # the SDK is imported only by the commands that talk to a server
    from openai.types import Batch

    from overnight.client.api import BatchApi

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_SIZE_UNITS: Final = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}  # OpenAI's "200 MB" is MiB


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _size(text: str) -> int:
    """Bytes: `209715200`, `200MB`, `1.5GB` (KB, MB and GB count in 1024s, as OpenAI's limits do)."""
    spaced = text.strip().upper().replace(" ", "")
    number = spaced.rstrip("KMGB")
    unit = spaced[len(number) :]
    if unit in ("K", "M", "G"):
        unit += "B"
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 200MB or 1000000") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least one byte")
    return value


def _window(text: str) -> str:
    if parse_window(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a completion window such as 24h")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base-url", help="the Batch API's base URL (default: $OPENAI_BASE_URL, else OpenAI's)"
    )
    parser.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY)")


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `submit` and `batches` to the `overnight` command's subparsers."""
    submit = commands.add_parser(
        "submit",
        help="run a JSONL file of any size as batches on any OpenAI-compatible Batch API",
        description="Validate INPUT, split it into batches under the target's limits, run them, retry what "
        "failed and write one result per input line, in input order. Run it again to resume.",
    )
    submit.add_argument("input", type=Path, help="batch input file (JSONL)")
    submit.add_argument("-o", "--output", type=Path, required=True, help="results file (JSONL, input order)")
    _connection_flags(submit)
    submit.add_argument(
        "--retries",
        type=int,
        default=3,
        help="rounds of retries for lines that failed in a retryable way (3)",
    )
    submit.add_argument(
        "--max-lines",
        type=_positive_int,
        default=limits.MAX_REQUESTS_PER_BATCH,
        help=f"lines per batch ({limits.MAX_REQUESTS_PER_BATCH:,})",
    )
    submit.add_argument(
        "--max-bytes", type=_size, default=limits.MAX_BATCH_INPUT_BYTES, help="bytes per batch file (200MB)"
    )
    submit.add_argument(
        "--max-embedding-inputs",
        type=_positive_int,
        default=limits.MAX_EMBEDDING_INPUTS_PER_BATCH,
        help=f"embedding inputs per batch ({limits.MAX_EMBEDDING_INPUTS_PER_BATCH:,})",
    )
    submit.add_argument("--completion-window", type=_window, default="24h", help="completion window (24h)")
    submit.add_argument(
        "--stream",
        action="store_true",
        help="also write each successful result line to stdout as it arrives (as batches run, where the "
        "server has partial results; else as each batch ends)",
    )
    submit.add_argument("--poll-interval", type=_seconds, default=5.0, help="seconds between polls (5)")

    batches = commands.add_parser("batches", help="list, inspect, cancel batches and fetch their results")
    actions = batches.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the newest batches")
    listing.add_argument("--limit", type=_positive_int, default=20, help="how many (20)")
    listing.add_argument("--json", action="store_true", help="the Batch objects as JSON lines")
    status = actions.add_parser("status", help="one batch")
    status.add_argument("batch_id")
    status.add_argument("--json", action="store_true", help="the Batch object as JSON")
    cancel = actions.add_parser("cancel", help="cancel a batch")
    cancel.add_argument("batch_id")
    results = actions.add_parser("results", help="a batch's output and error lines")
    results.add_argument("batch_id")
    results.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the output file here and the failures beside it (else stdout)",
    )
    for parser in (listing, status, cancel, results):
        _connection_flags(parser)


def run_client_command(args: argparse.Namespace, stdout: BinaryIO | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout.buffer
    if args.command == "submit":
        from overnight.client.job import SubmitOptions, run_submit
        from overnight.client.plan import PartLimits

        if args.retries < 0:
            print("overnight submit: error: --retries must be 0 or more", file=sys.stderr)
            return EXIT_USAGE
        options = SubmitOptions(
            input=args.input,
            output=args.output,
            base_url=args.base_url,
            api_key=args.api_key,
            retries=args.retries,
            limits=PartLimits(args.max_lines, args.max_bytes, args.max_embedding_inputs),
            completion_window=args.completion_window,
            stream=args.stream,
            poll_interval_s=args.poll_interval,
        )
        return run_submit(options, out)
    from overnight.client.api import ClientError

    try:
        return asyncio.run(_batches(args, out))
    except ClientError as error:
        print(f"overnight batches: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _when(seconds: int | None) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _counts(batch: Batch) -> str:
    counts = batch.request_counts
    if counts is None:
        return "-"
    return f"{counts.completed:,}/{counts.total:,} done, {counts.failed:,} failed"


async def _batches(args: argparse.Namespace, out: BinaryIO) -> int:
    from overnight.client.api import BatchApi

    api = BatchApi(args.base_url, args.api_key)
    try:
        if args.action == "list":
            return await _list(api, args.limit, args.json, out)
        if args.action == "status":
            batch = await api.retrieve(args.batch_id)
            if args.json:
                out.write(batch.model_dump_json(indent=2).encode() + b"\n")
            else:
                out.write(_describe(batch).encode())
            return EXIT_OK
        if args.action == "cancel":
            batch = await api.cancel(args.batch_id)
            out.write(f"{batch.id}: {batch.status}\n".encode())
            return EXIT_OK
        return await _results(api, args.batch_id, args.output, out)
    finally:
        await api.close()


async def _list(api: BatchApi, limit: int, as_json: bool, out: BinaryIO) -> int:
    async def call() -> list[Batch]:
        page = await api.sdk.batches.list(limit=min(limit, 100))
        found = []
        async for batch in page:
            found.append(batch)
            if len(found) >= limit:
                break
        return found

    found = await api.patiently("listing batches", call)
    for batch in found:
        if as_json:
            out.write(batch.model_dump_json().encode() + b"\n")
            continue
        part = (batch.metadata or {}).get("overnight_part", "")
        out.write(
            f"{batch.id}  {batch.status:<11}  {batch.endpoint:<20}  {_counts(batch):<32}  "
            f"{_when(batch.created_at)}  {part}\n".encode()
        )
    if not found and not as_json:
        print("no batches", file=sys.stderr)
    return EXIT_OK


def _describe(batch: Batch) -> str:
    rows = [
        ("id", batch.id),
        ("status", batch.status),
        ("endpoint", batch.endpoint),
        ("requests", _counts(batch)),
        ("input file", batch.input_file_id),
        ("output file", batch.output_file_id or "-"),
        ("error file", batch.error_file_id or "-"),
        ("created", _when(batch.created_at)),
        ("in progress", _when(batch.in_progress_at)),
        ("completed", _when(batch.completed_at)),
        ("expires", _when(batch.expires_at)),
    ]
    if batch.metadata:
        rows.append(("metadata", json.dumps(batch.metadata)))
    text = "".join(f"{name:<12} {value}\n" for name, value in rows)
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    for error in errors:
        where = f"line {error.line}" if error.line else "file"
        text += f"error        {where}: {error.code}: {error.message}\n"
    return text


async def _results(api: BatchApi, batch_id: str, output: Path | None, out: BinaryIO) -> int:
    from overnight.client.report import errors_path

    batch = await api.retrieve(batch_id)
    if not batch.output_file_id and not batch.error_file_id:
        print(f"overnight batches: {batch_id} is {batch.status}: it has no results yet", file=sys.stderr)
        return EXIT_FAILED
    written: dict[str, tuple[int, Path | None]] = {}
    for label, file_id, path in (
        ("results", batch.output_file_id, output),
        ("failures", batch.error_file_id, errors_path(output) if output else None),
    ):
        if not file_id:
            continue
        count = await _copy(api, file_id, path, out)
        written[label] = (count, path)
    for label, (count, path) in written.items():
        print(f"{label}: {plural(count, 'line')}" + (f" in {path}" if path else ""), file=sys.stderr)
    return EXIT_OK


async def _copy(api: BatchApi, file_id: str, path: Path | None, out: BinaryIO) -> int:
    async def call() -> int:
        count = 0
        target = path.open("wb") if path is not None else out
        try:
            async for lines in api.lines(file_id):
                target.write(b"".join(line + b"\n" for line in lines))
                count += len(lines)
        finally:
            if path is not None:
                target.close()
            else:
                target.flush()
        return count

    return await api.patiently(f"downloading {file_id}", call)
