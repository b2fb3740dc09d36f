"""Reading the input once: every line validated (with its line number in the original file), indexed, and
written into parts that each fit one batch of the target: one endpoint and one model per part, at most
`max_lines` lines, `max_bytes` bytes and `max_embedding_inputs` embedding inputs. The input is read in
chunks, so its size does not matter; a retry round writes its parts from the same file by offset.

Each part is checked with the server's own validator (`overnight.domain.validation`), fed the original
line numbers; what only the whole file can show (a custom_id used twice, a line too big for any part, a
URL that is no batch endpoint) is checked here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import msgspec

from overnight.client.index import LineIndex, Retry
from overnight.domain import limits
from overnight.domain.models import BatchError
from overnight.domain.validation import BatchValidator, count_embedding_inputs, is_blank

MAX_PROBLEMS: Final = 100  # problems shown for an invalid input
_KEPT_PROBLEMS: Final = 10 * MAX_PROBLEMS
_CHUNK: Final = 1 << 20
_INDEX_BATCH: Final = 10_000
_EMBEDDINGS: Final = "/v1/embeddings"
_MODERATIONS: Final = "/v1/moderations"


@dataclass(frozen=True, slots=True)
class PartLimits:
    max_lines: int = limits.MAX_REQUESTS_PER_BATCH
    max_bytes: int = limits.MAX_BATCH_INPUT_BYTES
    max_embedding_inputs: int = limits.MAX_EMBEDDING_INPUTS_PER_BATCH


@dataclass(slots=True)
class PartFile:
    name: str
    endpoint: str
    model: str
    path: Path
    lines: int = 0
    bytes: int = 0
    embedding_inputs: int = 0


@dataclass(slots=True)
class Plan:
    parts: list[PartFile]
    total: int  # request lines (blank lines are no requests)
    problems: list[BatchError] = field(default_factory=list)  # the first MAX_PROBLEMS, in line order
    more_problems: bool = False  # True when there were more than those
    size: int = 0
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


class PartWriter:
    """Writes lines into part files: one endpoint and model per part, and a new part whenever the next
    line would take the current one over a limit. Parts are named `<prefix>-pNNNN` in creation order."""

    def __init__(
        self,
        folder: Path,
        prefix: str,
        part_limits: PartLimits,
        on_close: Callable[[PartFile], None] = lambda part: None,
    ) -> None:
        self._folder = folder
        self._prefix = prefix
        self._limits = part_limits
        self._on_close = on_close
        self._open: dict[tuple[str, str], tuple[PartFile, BinaryIO]] = {}
        self._parts: list[PartFile] = []

    def add(self, endpoint: str, model: str, raw: bytes, embedding_inputs: int = 0) -> PartFile:
        key = (endpoint, model)
        current = self._open.get(key)
        if current is not None and not self._fits(current[0], len(raw) + 1, embedding_inputs):
            self._close(key)
            current = None
        if current is None:
            name = f"{self._prefix}-p{len(self._parts) + 1:04d}"
            part = PartFile(name, endpoint, model, self._folder / f"{name}.jsonl")
            current = (part, part.path.open("wb"))
            self._open[key] = current
            self._parts.append(part)
        part, handle = current
        handle.write(raw)
        handle.write(b"\n")
        part.lines += 1
        part.bytes += len(raw) + 1
        part.embedding_inputs += embedding_inputs
        return part

    def _fits(self, part: PartFile, size: int, embedding_inputs: int) -> bool:
        return (
            part.lines < self._limits.max_lines
            and part.bytes + size <= self._limits.max_bytes
            and part.embedding_inputs + embedding_inputs <= self._limits.max_embedding_inputs
        )

    def _close(self, key: tuple[str, str]) -> None:
        part, handle = self._open.pop(key)
        handle.close()
        self._on_close(part)

    def close(self) -> list[PartFile]:
        for key in list(self._open):
            self._close(key)
        return self._parts


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def numbered_lines(handle: BinaryIO, hasher: _Hasher | None = None) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, line without its newline) for every line of a binary file."""
    line_no = offset = 0
    pending: list[bytes] = []
    while chunk := handle.read(_CHUNK):
        if hasher is not None:
            hasher.update(chunk)
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        *complete, rest = chunk.split(b"\n")
        if pending:
            complete[0] = b"".join((*pending, complete[0]))
            pending = []
        for raw in complete:
            line_no += 1
            yield line_no, offset, raw
            offset += len(raw) + 1
        if rest:
            pending.append(rest)
    if pending:
        yield line_no + 1, offset, b"".join(pending)


class _Route(msgspec.Struct):
    custom_id: object = None
    url: object = None
    body: msgspec.Raw = msgspec.Raw()


class _ModelBody(msgspec.Struct):
    model: object = None


class _EmbeddingsBody(msgspec.Struct):
    model: object = None
    input: object = None


_route_decoder: Final = msgspec.json.Decoder(_Route)
_model_decoder: Final = msgspec.json.Decoder(_ModelBody)
_embeddings_decoder: Final = msgspec.json.Decoder(_EmbeddingsBody)


@dataclass(frozen=True, slots=True)
class _Routed:
    custom_id: object
    endpoint: str
    model: str
    embedding_inputs: int


def _route(raw: bytes) -> _Routed | None:
    """Where a line goes (its endpoint and model), or None for a line that cannot be placed."""
    try:
        line = _route_decoder.decode(raw)
        if not isinstance(line.url, str) or not line.body:
            return None
        inputs = 0
        if line.url == _EMBEDDINGS:
            body = _embeddings_decoder.decode(line.body)
            inputs = count_embedding_inputs(body.input) if body.input is not None else 0
            model = body.model
        else:
            model = _model_decoder.decode(line.body).model
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if (model is None or model == "") and line.url == _MODERATIONS:
        model = limits.DEFAULT_MODERATION_MODEL
    if not isinstance(model, str) or not model:
        return None
    return _Routed(line.custom_id, line.url, model, inputs)


def embedding_inputs_of(raw: bytes) -> int:
    routed = _route(raw)
    return routed.embedding_inputs if routed is not None else 0


def _serves_any(model: str) -> bool:
    return True  # the client cannot know the target's models; the server says at batch creation


def _stray_problems(line_no: int, raw: bytes) -> list[BatchError]:
    """Everything wrong with a line that cannot be placed in a part, in the validator's words."""
    try:
        url = _route_decoder.decode(raw).url
    except (msgspec.DecodeError, UnicodeDecodeError):
        url = None
    validator = BatchValidator(url if isinstance(url, str) else "", _serves_any, fast_path=False)
    validator.check_line(line_no, raw)
    found = list(validator.finish().errors)
    return found or [BatchError("invalid_request", "This line is not a batch request.", None, line_no)]


class _Planner:
    def __init__(self, folder: Path, part_limits: PartLimits, index: LineIndex) -> None:
        self.limits = part_limits
        self.index = index
        self.writer = PartWriter(folder, "r0", part_limits, self._part_closed)
        self.validators: dict[str, BatchValidator] = {}
        self.problems: list[BatchError] = []
        self.unlisted = 0  # problems past what is worth keeping
        self.rows: list[tuple[int, str, int, int, str]] = []
        self.total = 0

    def _part_closed(self, part: PartFile) -> None:
        validator = self.validators.pop(part.name, None)
        if validator is not None:
            self.problems.extend(validator.finish().errors)

    def _problem(self, line_no: int, code: str, message: str, param: str | None = None) -> None:
        if len(self.problems) < _KEPT_PROBLEMS:
            self.problems.append(BatchError(code, message, param, line_no))
        else:
            self.unlisted += 1

    def add(self, line_no: int, offset: int, raw: bytes) -> None:
        if is_blank(raw):
            return
        self.total += 1
        routed = _route(raw)
        if routed is None:
            if len(self.problems) < _KEPT_PROBLEMS:  # a hopeless file need not be checked in full
                self.problems.extend(_stray_problems(line_no, raw))
            else:
                self.unlisted += 1
            return
        if routed.endpoint not in limits.BATCH_ENDPOINTS:
            endpoints = ", ".join(limits.BATCH_ENDPOINTS)
            message = f"The url {routed.endpoint[:200]!r} is not a Batch API endpoint ({endpoints})."
            self._problem(line_no, "invalid_url", message, "url")
            return
        if len(raw) + 1 > self.limits.max_bytes:
            message = (
                f"This line has {len(raw) + 1:,} bytes, more than fit in one batch "
                f"({self.limits.max_bytes:,} bytes, --max-bytes)."
            )
            self._problem(line_no, "line_too_large", message)
            return
        part = self.writer.add(routed.endpoint, routed.model, raw, routed.embedding_inputs)
        validator = self.validators.get(part.name)
        if validator is None:
            validator = BatchValidator(
                routed.endpoint,
                _serves_any,
                max_requests=self.limits.max_lines,
                max_embedding_inputs=self.limits.max_embedding_inputs,
                max_errors=MAX_PROBLEMS,
            )
            self.validators[part.name] = validator
        validator.check_line(line_no, raw)
        if isinstance(routed.custom_id, str):
            self.rows.append((line_no, routed.custom_id, offset, len(raw), part.name))
            if len(self.rows) >= _INDEX_BATCH:
                self.flush()

    def flush(self) -> None:
        self.index.add_lines(self.rows)
        self.rows = []


def plan_input(path: Path, folder: Path, part_limits: PartLimits, index: LineIndex) -> Plan:
    """Validate, index and split `path` into part files in `folder` (one pass over the file)."""
    planner = _Planner(folder, part_limits, index)
    hasher = hashlib.sha256()
    index.begin()
    with path.open("rb") as handle:
        for line_no, offset, raw in numbered_lines(handle, hasher):
            planner.add(line_no, offset, raw)
    planner.flush()
    parts = planner.writer.close()
    index.finish_loading()
    for line_no, custom_id, first in index.duplicates(MAX_PROBLEMS):
        message = (
            f"The custom_id {custom_id[:200]!r} is a duplicate of line {first}. "
            "The custom_id parameter must be unique for each request."
        )
        planner.problems.append(BatchError("duplicate_custom_id", message, "custom_id", line_no))
    index.commit()
    if planner.total == 0:
        planner.problems.append(BatchError("empty_file", "The input file contains no requests."))
    problems = _first_problems(planner.problems)
    more = planner.unlisted > 0 or len(planner.problems) > len(problems)
    plan = Plan(parts, planner.total, problems, more, path.stat().st_size)
    plan.sha256 = hasher.hexdigest()
    return plan


def _first_problems(found: Iterable[BatchError]) -> list[BatchError]:
    """The first MAX_PROBLEMS problems in line order (file-level first), one per line and code (the
    last found: the whole file's view of a duplicate names the line it repeats)."""
    unique = {(error.line or 0, error.code): error for error in found}
    return [unique[key] for key in sorted(unique)][:MAX_PROBLEMS]


def write_retry_parts(
    input_path: Path,
    folder: Path,
    prefix: str,
    part_limits: PartLimits,
    retries: Iterable[tuple[Retry, str, str]],
    index: LineIndex,
) -> list[PartFile]:
    """Parts for the lines to try again ((retry, endpoint, model), in input order), read from the input
    by offset; the index then says each line is in its new part. The same retries give the same parts."""
    writer = PartWriter(folder, prefix, part_limits)
    moves: dict[str, list[int]] = {}
    with input_path.open("rb") as handle:
        for retry, endpoint, model in retries:
            handle.seek(retry.offset)
            raw = handle.read(retry.length)
            inputs = embedding_inputs_of(raw) if endpoint == _EMBEDDINGS else 0
            part = writer.add(endpoint, model, raw, inputs)
            moves.setdefault(part.name, []).append(retry.line_no)
    parts = writer.close()
    index.begin()
    for name, line_nos in moves.items():
        index.assign(name, line_nos)
    index.commit()
    return parts
