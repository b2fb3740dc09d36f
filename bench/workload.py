"""Batch input files, and checking what came back."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgspec

ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
_FILLER = (
    "Consider the following passage carefully and answer the question at the end in one sentence. "
    "The river bends twice before it reaches the old mill, where the water slows and widens. "
)
_encode = msgspec.json.encode


def custom_id(index: int) -> str:
    return f"request-{index}"


def chat_body(index: int, *, filler: int = 0, key: str | None = None) -> bytes:
    """One chat request body; `filler` adds that many characters of text, `key` a fake-upstream key."""
    text = f"Question {index}: what is {index} + 2? Answer with the number only."
    if filler:
        text = (_FILLER * (filler // len(_FILLER) + 1))[:filler] + " " + text
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
    if key is not None:
        body["fake"] = {"key": key}
    return _encode(body)


def request_line(index: int, body: bytes) -> bytes:
    head = _encode({"custom_id": custom_id(index), "method": "POST", "url": ENDPOINT})
    return head[:-1] + b',"body":' + body + b"}"


def write_chat_file(path: Path, count: int, *, keys: bool = False) -> list[bytes]:
    """A file of `count` chat requests; returns the request bodies, in order."""
    bodies = [chat_body(i, key=f"k{i}" if keys else None) for i in range(count)]
    with path.open("wb") as out:
        for index, body in enumerate(bodies):
            out.write(request_line(index, body) + b"\n")
    return bodies


def write_sized_file(path: Path, count: int, total_bytes: int) -> int:
    """A file of `count` chat requests padded to about `total_bytes` in all; returns its real size."""
    per_line = total_bytes // count
    size = 0
    with path.open("wb") as out:
        for index in range(count):
            bare = len(request_line(index, chat_body(index))) + 1
            line = request_line(index, chat_body(index, filler=max(0, per_line - bare - 1))) + b"\n"
            out.write(line)
            size += len(line)
    return size


class _Response(msgspec.Struct):
    status_code: int


class _OutputLine(msgspec.Struct):
    custom_id: str
    response: _Response | None = None


_output_decoder = msgspec.json.Decoder(_OutputLine)


@dataclass(frozen=True)
class OutputCheck:
    lines: int
    unique: int
    duplicates: int  # lines whose custom_id appeared before
    missing: int  # expected custom_ids absent
    not_200: int

    @property
    def ok(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.not_200 == 0


def check_output(data: bytes, expected: int) -> OutputCheck:
    """Compare an output file with the `expected` requests request-0 ... request-(expected-1)."""
    ids: Counter[str] = Counter()
    not_200 = 0
    lines = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        lines += 1
        line = _output_decoder.decode(raw)
        ids[line.custom_id] += 1
        if line.response is None or line.response.status_code != 200:
            not_200 += 1
    missing = sum(1 for i in range(expected) if custom_id(i) not in ids)
    duplicates = sum(n - 1 for n in ids.values() if n > 1)
    return OutputCheck(lines, len(ids), duplicates, missing, not_200)
