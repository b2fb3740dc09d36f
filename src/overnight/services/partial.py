"""File content by lines, and a batch's result files while it runs (Doubleword's convention).

`GET /v1/files/{id}/content` takes `skip` (or `offset`) and `limit` and answers `X-Incomplete` and
`X-Last-Line` (docs/partial-results.md). A batch's output and error files can be read before they
exist: while the batch runs, the lines come from its recorded results in the order they were recorded.
The first such read fixes that order for the finished files too (`ResultOrder.RECORDED`), so a reader
goes on from the same offset after the batch ends and never reads a line twice or misses one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass

from overnight.domain.ids import error_file_id, output_file_id, result_file_batch
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.models import Batch, ResultKind
from overnight.domain.partial import PAGE_LINES, RUNNING_BYTES, LineWindow, ResultOrder
from overnight.services.files import FilesService
from overnight.store.base import MetadataStore

OUTPUT_KINDS = tuple(kind for kind in ResultKind if kind.in_output_file)
ERROR_KINDS = tuple(kind for kind in ResultKind if not kind.in_output_file)


@dataclass(frozen=True)
class Content:
    """What a content read answers: the bytes, their length when known up front (the whole file), and
    the two headers of the convention (`last_line` None: X-Last-Line not sent)."""

    chunks: AsyncIterator[bytes]
    size: int | None
    incomplete: bool
    last_line: int | None


async def _listed(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def window_chunks(chunks: AsyncIterator[bytes], window: LineWindow) -> AsyncIterator[bytes]:
    """The lines of a stream after its first `window.skip`, at most `window.limit` of them, newlines kept."""
    to_skip, left = window.skip, window.limit
    async for chunk in chunks:
        start = 0
        if to_skip:
            newlines = chunk.count(b"\n")
            if newlines < to_skip:
                to_skip -= newlines
                continue
            while to_skip:
                start = chunk.index(b"\n", start) + 1
                to_skip -= 1
        if left is None:
            if start < len(chunk):
                yield chunk[start:] if start else chunk
            continue
        end = start
        while left and end < len(chunk):
            newline = chunk.find(b"\n", end)
            end = len(chunk) if newline < 0 else newline + 1
            left -= newline >= 0
        if end > start:
            yield chunk[start:end]
        if not left:
            return


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
    """The lines of a stream, each with its newline (the last one as it ends)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def with_result_file_ids(batch: Batch) -> Batch:
    """The batch as Doubleword shows one: its output and error file ids from the start, readable while it
    runs (only with `early_result_file_ids`: a stock client takes an output file id as "finished")."""
    if batch.status in TERMINAL:
        return batch
    return dataclasses.replace(
        batch, output_file_id=output_file_id(batch.id), error_file_id=error_file_id(batch.id)
    )


class PartialResults:
    """Content reads by lines, for every file, and for a batch's result files also while it runs."""

    def __init__(
        self, store: MetadataStore | None, files: FilesService, *, early_result_file_ids: bool = False
    ) -> None:
        """`store` None: no file is a batch's result file (plain reads only)."""
        self._store = store
        self._files = files
        self.early_result_file_ids = early_result_file_ids

    def shown(self, batch: Batch) -> Batch:
        """The Batch object as the API shows it (see `with_result_file_ids`)."""
        return with_result_file_ids(batch) if self.early_result_file_ids else batch

    async def read(self, project: str | None, file_id: str, window: LineWindow) -> Content:
        """The file's lines in `window`, if it is the project's (`project` None: of any project, for
        an admin); a batch's result file is then read in the batch's own project."""
        store, owner = self._store, result_file_batch(file_id)
        batch = None if owner is None or store is None else await store.get_batch(owner[0], project)
        if store is not None and owner is not None and batch is not None:
            if batch.status not in TERMINAL:
                return await self._running(store, batch, owner[1], window)
            return await self._finished(store, file_id, batch, owner[1], window)
        file, chunks = await self._files.content(project, file_id)
        if window.whole:
            return Content(chunks, file.bytes, False, None)
        if window.limit is None:  # the rest of the file: its line count is not known up front
            return Content(window_chunks(chunks, window), None, False, None)
        # One line more than asked for says whether more follow (as Doubleword's pagination does); a
        # reply stops at RUNNING_BYTES, the client asks again from X-Last-Line.
        kept: list[bytes] = []
        size, more = 0, False
        probe = LineWindow(window.skip, window.limit + 1)
        async with contextlib.aclosing(_lines(window_chunks(chunks, probe))) as lines:
            async for line in lines:
                if len(kept) == window.limit or size >= RUNNING_BYTES:
                    more = True
                    break
                kept.append(line)
                size += len(line)
        return Content(_listed(kept), size, more, window.skip + len(kept))

    @staticmethod
    async def _line_count(store: MetadataStore, batch: Batch, output: bool) -> int:
        """How many lines the batch's finished output (or error) file has."""
        if output:
            return batch.request_counts.completed
        return sum(group.count for group in await store.error_groups(batch.id))

    async def _finished(
        self, store: MetadataStore, file_id: str, batch: Batch, output: bool, window: LineWindow
    ) -> Content:
        file, chunks = await self._files.content(batch.project, file_id)
        total = await self._line_count(store, batch, output)
        served = max(0, total - window.skip)
        if window.limit is not None:
            served = min(served, window.limit)
        last = window.skip + served
        if window.whole:
            return Content(chunks, file.bytes, False, last)
        return Content(window_chunks(chunks, window), None, last < total, last)

    @staticmethod
    async def _running(store: MetadataStore, batch: Batch, output: bool, window: LineWindow) -> Content:
        """The lines recorded so far after the first `window.skip`, in the order they were recorded: a
        page of them at a time, up to `window.limit` lines or RUNNING_BYTES."""
        order = await store.claim_result_order(batch.id, ResultOrder.RECORDED)
        if order is not ResultOrder.RECORDED:  # finalizing, and nobody read before: the files decide
            return Content(_listed(()), 0, True, window.skip)
        kinds = OUTPUT_KINDS if output else ERROR_KINDS
        lines: list[bytes] = []
        size, after, skip = 0, 0, window.skip
        while size < RUNNING_BYTES and (window.limit is None or len(lines) < window.limit):
            want = PAGE_LINES if window.limit is None else min(PAGE_LINES, window.limit - len(lines))
            page = await store.recorded_results(batch.id, kinds, after_seq=after, skip=skip, limit=want)
            for _, line in page:
                lines.append(line + b"\n")
                size += len(line) + 1
                if size >= RUNNING_BYTES:
                    break
            if len(page) < want:
                break
            after, skip = page[-1][0], 0
        return Content(_listed(lines), size, True, window.skip + len(lines))
