"""Problems in an input file's content: the batch is created, then ends `failed` with `errors.data`.

No line of a failed batch runs: the fake upstream sees no request.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI
from openai.types import Batch, BatchError

from acceptance.conftest import chat_line, jsonl, upload, wait_for
from support.server import FakeUpstreamProcess

Expected = tuple[str, int | None, str | None]  # (code, line, param)

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"

MESSAGES = {
    "invalid_json_line": "This line is not parseable as valid JSON.",
    "invalid_url": "The URL provided for this request does not match the batch endpoint.",
    "streaming_unsupported": "Chat Completions: Streaming is not supported in the Batch API.",
}


def without(line: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in line.items() if k != key}


def with_body(line: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {k: v for k, v in {**line["body"], **changes}.items() if v is not ...}
    return {**line, "body": body}


def encode(lines: list[dict[str, Any] | bytes]) -> bytes:
    return b"".join(line if isinstance(line, bytes) else jsonl([line]) for line in lines)


def run_failing(client: OpenAI, upstream: FakeUpstreamProcess, content: bytes, endpoint: str = CHAT) -> Batch:
    """Upload `content`, create a batch on it and check it ends `failed` having run nothing."""
    before = upstream.stats()["requests"]
    file = upload(client, content)
    created = client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    assert created.status == "validating"
    batch = wait_for(client, created.id)
    assert batch.status == "failed", batch.errors
    assert batch.failed_at is not None
    assert batch.created_at <= batch.failed_at
    assert batch.in_progress_at is None
    assert batch.finalizing_at is None
    assert batch.completed_at is None
    assert batch.output_file_id is None
    assert batch.error_file_id is None
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        0,
        0,
        0,
    )
    assert batch.errors is not None
    assert batch.errors.object == "list"
    assert batch.errors.data
    for error in batch.errors.data:
        assert error.code
        assert error.message
    assert upstream.stats()["requests"] == before
    return batch


def entries(batch: Batch) -> list[BatchError]:
    assert batch.errors is not None
    assert batch.errors.data is not None
    return batch.errors.data


def triples(batch: Batch) -> list[Expected]:
    return [(e.code or "", e.line, e.param) for e in entries(batch)]


def tiny_lines(count: int) -> bytes:
    """`count` small valid chat lines with distinct custom_ids, built without json.dumps per line."""
    url, body = CHAT, '{"model":"fake-chat","messages":[]}'
    return "".join(
        f'{{"custom_id":"{i}","method":"POST","url":"{url}","body":{body}}}\n' for i in range(count)
    ).encode()


GOOD = chat_line("good")

CASES: dict[str, tuple[list[dict[str, Any] | bytes], list[Expected]]] = {
    "invalid_json_line": (
        [chat_line("a"), b'{"custom_id": "b", "method": "POST",\n', chat_line("c")],
        [("invalid_json_line", 2, None)],
    ),
    "not-an-object": ([chat_line("a"), b"[1, 2, 3]\n"], [("invalid_json_line", 2, None)]),
    "missing-custom_id": (
        [GOOD, without(chat_line("x"), "custom_id")],
        [("missing_required_parameter", 2, "custom_id")],
    ),
    "missing-method": (
        [GOOD, without(chat_line("x"), "method")],
        [("missing_required_parameter", 2, "method")],
    ),
    "missing-url": ([GOOD, without(chat_line("x"), "url")], [("missing_required_parameter", 2, "url")]),
    "missing-body": ([GOOD, without(chat_line("x"), "body")], [("missing_required_parameter", 2, "body")]),
    "invalid_url": ([GOOD, {**chat_line("x"), "url": "/v1/completions"}], [("invalid_url", 2, "url")]),
    "invalid_method": ([GOOD, {**chat_line("x"), "method": "GET"}], [("invalid_method", 2, "method")]),
    "duplicate_custom_id": (
        [chat_line("a"), chat_line("b"), chat_line("a")],
        [("duplicate_custom_id", 3, "custom_id")],
    ),
    "mismatched_model": (
        [chat_line("a", model="fake-chat"), chat_line("b", model="fake-other")],
        [("mismatched_model", 2, "body.model")],
    ),
    "model_not_found": (
        [chat_line("a", model="claude-3-opus"), chat_line("b", model="claude-3-opus")],
        [("model_not_found", 1, "body.model"), ("model_not_found", 2, "body.model")],
    ),
    "streaming_unsupported": (
        [GOOD, chat_line("x", stream=True)],
        [("streaming_unsupported", 2, "body.stream")],
    ),
    "body-without-model": (
        [GOOD, with_body(chat_line("x"), model=...)],
        [("invalid_request", 2, "body.model")],
    ),
    "body-without-messages": (
        [GOOD, with_body(chat_line("x"), messages=...)],
        [("invalid_request", 2, "body.messages")],
    ),
    "invalid-utf8": (
        [GOOD, b'{"custom_id": "\xff\xfe", "method": "POST"}\n'],
        [("invalid_json_line", 2, None)],
    ),
    "custom_id-not-a-string": (
        [GOOD, {**chat_line("x"), "custom_id": 7}],
        [("invalid_request", 2, "custom_id")],
    ),
    "body-not-an-object": ([GOOD, {**chat_line("x"), "body": "hi"}], [("invalid_request", 2, "body")]),
    "body-null": ([GOOD, {**chat_line("x"), "body": None}], [("missing_required_parameter", 2, "body")]),
    "empty_file": ([b"\n", b"   \n", b"\t\n", b"\n"], [("empty_file", None, None)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_fails_the_batch_with_its_code(
    client: OpenAI, upstream: FakeUpstreamProcess, case: str
) -> None:
    lines, expected = CASES[case]
    batch = run_failing(client, upstream, encode(lines))
    assert triples(batch) == expected
    for error in entries(batch):
        if error.code in MESSAGES:
            assert error.message == MESSAGES[error.code]


def test_exact_messages_for_missing_parameters_and_models(
    client: OpenAI, upstream: FakeUpstreamProcess
) -> None:
    lines: list[dict[str, Any] | bytes] = [
        without(chat_line("a", model="nobody-serves-this"), "method"),
        with_body(chat_line("b"), model=...),
        with_body(chat_line("c", model="nobody-serves-this"), messages=...),
    ]
    batch = run_failing(client, upstream, encode(lines))
    assert [(e.code, e.line, e.message) for e in entries(batch)] == [
        ("missing_required_parameter", 1, "Missing required parameter: 'method'."),
        ("model_not_found", 1, "The provided model 'nobody-serves-this' is not supported by the Batch API."),
        ("invalid_request", 2, "Model parameter is required."),
        ("model_not_found", 3, "The provided model 'nobody-serves-this' is not supported by the Batch API."),
        ("invalid_request", 3, "Messages parameter is required."),
    ]


def test_several_bad_lines_are_all_reported_in_line_order(
    client: OpenAI, upstream: FakeUpstreamProcess
) -> None:
    lines: list[dict[str, Any] | bytes] = [
        chat_line("ok-1"),
        {**chat_line("get"), "method": "PUT"},
        b"not json at all\n",
        b"\n",  # blank lines are skipped but still counted for line numbers
        chat_line("ok-1"),
        without(chat_line("no-url"), "url"),
        chat_line("other-model", model="fake-other"),
        chat_line("ok-2"),
        chat_line("streamer", stream=True),
    ]
    batch = run_failing(client, upstream, encode(lines))
    assert triples(batch) == [
        ("invalid_method", 2, "method"),
        ("invalid_json_line", 3, None),
        ("duplicate_custom_id", 5, "custom_id"),
        ("missing_required_parameter", 6, "url"),
        ("mismatched_model", 7, "body.model"),
        ("streaming_unsupported", 9, "body.stream"),
    ]


def test_one_line_with_every_key_missing_reports_each_key(
    client: OpenAI, upstream: FakeUpstreamProcess
) -> None:
    batch = run_failing(client, upstream, encode([GOOD, b"{}\n"]))
    assert triples(batch) == [
        ("missing_required_parameter", 2, "custom_id"),
        ("missing_required_parameter", 2, "method"),
        ("missing_required_parameter", 2, "url"),
        ("missing_required_parameter", 2, "body"),
    ]


def test_more_than_50000_requests_is_too_many_tasks(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    content = tiny_lines(50_001)
    batch = run_failing(client, upstream, content)
    assert triples(batch) == [("too_many_tasks", None, None)]


def test_exactly_50000_requests_is_not_too_many(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    """At the limit the file passes the count check; a bad last line still fails it, so nothing runs."""
    content = tiny_lines(49_999) + b"oops\n"
    batch = run_failing(client, upstream, content)
    assert triples(batch) == [("invalid_json_line", 50_000, None)]


def test_more_than_50000_embedding_inputs_in_total(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    inputs = ["x"] * 25_001
    lines: list[dict[str, Any] | bytes] = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": EMBEDDINGS,
            "body": {"model": "text-embedding-3-small", "input": inputs},
        }
        for i in range(2)
    ]
    batch = run_failing(client, upstream, encode(lines), endpoint=EMBEDDINGS)
    assert triples(batch) == [("too_many_embedding_inputs", 2, "body.input")]


def test_error_entries_are_capped_at_100(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    content = b"".join(b"not json %d\n" % i for i in range(500))
    batch = run_failing(client, upstream, content)
    assert triples(batch) == [("invalid_json_line", line, None) for line in range(1, 101)]


def test_failed_batch_raw_json_keeps_every_field(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    batch = run_failing(client, upstream, b"nope\n")
    raw = client.batches.with_raw_response.retrieve(batch.id)
    data: dict[str, Any] = json.loads(raw.text)
    assert data["status"] == "failed"
    assert data["errors"] == {
        "object": "list",
        "data": [
            {"code": "invalid_json_line", "message": MESSAGES["invalid_json_line"], "param": None, "line": 1}
        ],
    }
    assert isinstance(data["failed_at"], int)
    assert data["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert data["output_file_id"] is None
    assert data["error_file_id"] is None
