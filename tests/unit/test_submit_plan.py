"""`overnight submit`'s reading of the input: numbered lines, parts under the limits, validation with
the original line numbers, and retry parts."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.client import plan as plan_module
from overnight.client.index import LineIndex
from overnight.client.outcomes import not_run_line
from overnight.client.plan import PartLimits, PartWriter, numbered_lines, plan_input, write_retry_parts


def _chat(custom_id: str, model: str = "m1", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": custom_id}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _embedding(custom_id: str, inputs: int, model: str = "e1") -> dict[str, Any]:
    body = {"model": model, "input": [f"{custom_id}-{n}" for n in range(inputs)]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def _write(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    trailing=st.booleans(),
    chunk=st.integers(min_value=1, max_value=9),
)
def test_numbered_lines_gives_every_line_its_number_and_offset(
    lines: list[bytes], trailing: bool, chunk: int
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    hasher = hashlib.sha256()
    original = plan_module._CHUNK
    plan_module._CHUNK = chunk  # type: ignore[misc]
    try:
        found = list(numbered_lines(io.BytesIO(data), hasher))
    finally:
        plan_module._CHUNK = original  # type: ignore[misc]
    expected = lines if (trailing or not lines or lines[-1]) else lines[:-1]
    assert [raw for _, _, raw in found] == expected
    assert [number for number, _, _ in found] == list(range(1, len(expected) + 1))
    for _, offset, raw in found:
        assert data[offset : offset + len(raw)] == raw
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


@settings(max_examples=100, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 40), st.integers(0, 5)), max_size=60
    ),
    max_lines=st.integers(1, 8),
    max_bytes=st.integers(41, 120),
    max_inputs=st.integers(5, 12),
)
def test_parts_keep_to_every_limit_and_one_model(
    tmp_path_factory: pytest.TempPathFactory,
    items: list[tuple[str, int, int]],
    max_lines: int,
    max_bytes: int,
    max_inputs: int,
) -> None:
    folder = tmp_path_factory.mktemp("parts")
    closed: list[str] = []
    writer = PartWriter(
        folder, "r0", PartLimits(max_lines, max_bytes, max_inputs), lambda p: closed.append(p.name)
    )
    placed = []
    for number, (model, size, inputs) in enumerate(items):
        raw = f"{number:03d}".encode().ljust(size, b"x")
        placed.append((writer.add("/v1/embeddings", model, raw, inputs).name, model, raw))
    parts = writer.close()
    assert sorted(closed) == sorted(part.name for part in parts)
    for part in parts:
        mine = [(model, raw) for name, model, raw in placed if name == part.name]
        assert {model for model, _ in mine} == {part.model}
        assert part.path.read_bytes() == b"".join(raw + b"\n" for _, raw in mine)  # in input order
        assert part.lines == len(mine) <= max_lines
        assert part.bytes <= max_bytes
        assert part.embedding_inputs <= max_inputs
    assert sum(part.lines for part in parts) == len(items)


def test_plan_splits_by_model_and_limit_and_indexes_every_line(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [
        _chat("a"),
        "",
        _chat("b", "m2"),
        _chat("c"),
        "  ",
        _chat("d"),
        _chat("e"),
    ]
    source = _write(tmp_path / "in.jsonl", lines)
    index = LineIndex(tmp_path / "index.sqlite")

    plan = plan_input(source, tmp_path, PartLimits(max_lines=2), index)

    assert plan.ok
    assert plan.total == 5
    assert [(part.name, part.model, part.lines) for part in plan.parts] == [
        ("r0-p0001", "m1", 2),
        ("r0-p0002", "m2", 1),
        ("r0-p0003", "m1", 2),
    ]
    assert [json.loads(line)["custom_id"] for line in plan.parts[0].path.read_text().splitlines()] == [
        "a",
        "c",
    ]
    assert plan.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert [custom_id for custom_id, _, _ in index.in_order()] == ["a", "b", "c", "d", "e"]
    assert index.counts().total == 5


def test_embedding_inputs_are_counted_per_part(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", [_embedding("x", 3), _embedding("y", 3), _embedding("z", 1)])
    index = LineIndex(tmp_path / "index.sqlite")

    plan = plan_input(source, tmp_path, PartLimits(max_embedding_inputs=4), index)

    assert plan.ok
    assert [(part.lines, part.embedding_inputs) for part in plan.parts] == [(1, 3), (2, 4)]


def test_problems_carry_the_line_numbers_of_the_original_file(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [
        _chat("a"),
        "",
        "{not json",
        _chat("b", stream=True),
        {**_chat("c"), "url": "/v1/nowhere"},
        _chat("d", messages=None),
        _chat("a", "m2"),  # a duplicate in another part
        _chat("big", padding="x" * 300),
        _embedding("many", 5),
    ]
    source = _write(tmp_path / "in.jsonl", lines)
    index = LineIndex(tmp_path / "index.sqlite")

    plan = plan_input(source, tmp_path, PartLimits(max_bytes=300, max_embedding_inputs=4), index)

    found = [(problem.line, problem.code) for problem in plan.problems]
    assert found == [
        (3, "invalid_json_line"),
        (4, "streaming_unsupported"),
        (5, "invalid_url"),
        (6, "invalid_request"),
        (7, "duplicate_custom_id"),
        (8, "line_too_large"),
        (9, "too_many_embedding_inputs"),
    ]
    assert "duplicate of line 1" in plan.problems[4].message
    assert not plan.more_problems


def test_an_empty_input_is_a_problem(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", ["", " "])
    plan = plan_input(source, tmp_path, PartLimits(), LineIndex(tmp_path / "index.sqlite"))
    assert [problem.code for problem in plan.problems] == ["empty_file"]


def test_a_hopeless_file_reports_its_first_problems_only(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", ["nope"] * 2_500)
    plan = plan_input(source, tmp_path, PartLimits(), LineIndex(tmp_path / "index.sqlite"))
    assert len(plan.problems) == plan_module.MAX_PROBLEMS
    assert plan.more_problems
    assert plan.problems[0].line == 1


def test_retry_parts_are_read_back_by_offset_and_are_the_same_every_time(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [_chat(f"c{i}", "m1" if i % 2 else "m2") for i in range(10)]
    source = _write(tmp_path / "in.jsonl", lines)
    index = LineIndex(tmp_path / "index.sqlite")
    plan = plan_input(source, tmp_path, PartLimits(max_lines=3), index)
    for part in plan.parts:
        for line in part.path.read_text().splitlines():
            custom_id = json.loads(line)["custom_id"]
            failure = not_run_line(custom_id, "batch_expired", "expired")
            index.record(part.name, [failure if custom_id in ("c1", "c2", "c4", "c7") else _ok(custom_id)])
    groups = {part.name: (part.endpoint, part.model) for part in plan.parts}

    def retry_parts(folder: Path) -> list[tuple[str, bytes]]:
        folder.mkdir()
        retries = ((retry, *groups[retry.part]) for retry in index.retryable())
        made = write_retry_parts(source, folder, "r1", PartLimits(max_lines=3), retries, index)
        return [(part.name, part.path.read_bytes()) for part in made]

    first, second = retry_parts(tmp_path / "a"), retry_parts(tmp_path / "b")

    assert first == second
    assert [[json.loads(x)["custom_id"] for x in data.splitlines()] for _, data in first] == [
        ["c1", "c7"],
        ["c2", "c4"],
    ]
    assert index.unanswered("r1-p0001") == [(2, "c1"), (8, "c7")]


def _ok(custom_id: str) -> bytes:
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
    line = {"id": "r", "custom_id": custom_id, "response": {"status_code": 200, "body": body}, "error": None}
    return json.dumps(line).encode()
