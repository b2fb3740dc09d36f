"""The job's state file beside the output (`RESULTS.jsonl.overnight-state.json`): the parts, their files and
batches, and which have been collected. It is written atomically (a temporary file, fsync, rename), so
after Ctrl-C, a crash or a reboot it holds either the old state or the new one, never half of each.

What a state says is always safe to act on again: a part with a batch id is never submitted again; a
part whose create request may have reached the server (`create_sent`) is first looked for among the
server's batches (by the job and part in its metadata) before it is created, with the same
Idempotency-Key.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Final

import msgspec

STATE_VERSION: Final = 1
TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})


class PartState(msgspec.Struct, kw_only=True):
    name: str  # r<round>-p<NNNN>
    round: int
    endpoint: str
    model: str
    lines: int
    bytes: int
    file_id: str | None = None
    create_sent: bool = False
    batch_id: str | None = None
    status: str | None = None  # the batch's status when last seen
    stream_file_id: str | None = None  # the output file read while it ran (--stream)
    stream_offset: int = 0  # the lines of it already read
    collected: bool = False
    succeeded: int = 0  # once collected
    failed: int = 0

    @property
    def file_name(self) -> str:
        return f"{self.name}.jsonl"

    def idempotency_key(self, job_id: str, what: str) -> str:
        """The same for every try of the same request of the same job: `what` is `file` or `batch`."""
        return f"overnight-{job_id}-{self.name}-{what}"


class InputFingerprint(msgspec.Struct, kw_only=True):
    path: str
    size: int
    mtime_ns: int
    sha256: str


class Summary(msgspec.Struct, kw_only=True):
    total: int
    succeeded: int
    failed: int
    input_tokens: int
    output_tokens: int
    wall_s: float
    failure_codes: list[tuple[str, int]]


class JobState(msgspec.Struct, kw_only=True):
    version: int = STATE_VERSION
    job_id: str
    created_at: float  # Unix seconds
    base_url: str
    input: InputFingerprint
    total_lines: int
    completion_window: str
    max_lines: int
    max_bytes: int
    max_embedding_inputs: int
    parts: list[PartState]
    finished: bool = False
    summary: Summary | None = None

    @property
    def last_round(self) -> int:
        return max((part.round for part in self.parts), default=0)

    def round_parts(self, number: int) -> list[PartState]:
        return [part for part in self.parts if part.round == number]

    def part(self, name: str) -> PartState:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)


def new_job_id() -> str:
    return secrets.token_hex(8)


def now() -> float:
    return time.time()


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(JobState)


class StateError(Exception):
    """A state file that cannot be read as this version's state."""


def load(path: Path) -> JobState | None:
    """The state at `path`, or None where there is none yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        state = _decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise StateError(f"{path} is not a state file of this version of overnight: {error}") from error
    if state.version != STATE_VERSION:
        raise StateError(
            f"{path} was written by another version of overnight (state version {state.version})"
        )
    return state


def save(path: Path, state: JobState) -> None:
    """Write `state` to `path` atomically and durably."""
    temporary = path.with_name(f".{path.name}.tmp")
    data = msgspec.json.format(_encoder.encode(state), indent=2)
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory descriptors
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(descriptor)
