"""A batch from upload to output file, through the real server and the official SDK in strict mode."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, read_lines, run_batch
from support.server import FakeUpstreamProcess

ENDPOINT_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "fake-text", "prompt": "Once upon a time"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": ["one", "two"]},
    "/v1/responses": {"model": "fake-chat", "input": "hi"},
    "/v1/moderations": {"model": "omni-moderation-latest", "input": "hello"},
}


@pytest.mark.parametrize("endpoint", sorted(ENDPOINT_BODIES))
def test_each_endpoint_runs_to_completion(client: OpenAI, endpoint: str) -> None:
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": ENDPOINT_BODIES[endpoint]}
        for i in range(5)
    ]
    batch = run_batch(client, lines, endpoint)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        5,
        5,
        0,
    )
    assert batch.error_file_id is None
    assert batch.in_progress_at
    assert batch.finalizing_at
    assert batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.model == ENDPOINT_BODIES[endpoint]["model"]
    output = read_lines(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == [f"req-{i}" for i in range(5)]
    for line in output:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert isinstance(line["response"]["body"], dict)
        assert line["response"]["request_id"]
    output_file = client.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output"
    listed = [f.id for f in client.files.list(purpose="batch_output")]
    assert batch.output_file_id in listed


def test_usage_is_summed_from_upstream_responses(client: OpenAI) -> None:
    batch = run_batch(client, [chat_line(f"u{i}") for i in range(4)])
    output = read_lines(client, batch.output_file_id)
    expected_in = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    expected_out = sum(line["response"]["body"]["usage"]["completion_tokens"] for line in output)
    assert batch.usage is not None
    assert batch.usage.input_tokens == expected_in > 0
    assert batch.usage.output_tokens == expected_out > 0
    assert batch.usage.total_tokens == expected_in + expected_out


def test_upstream_errors_land_in_the_error_file(client: OpenAI) -> None:
    lines = [
        chat_line("ok-1"),
        chat_line("bad-request", fake={"status": 400}),
        chat_line("always-500", fake={"status": 500}),
        chat_line("flaky", fake={"status": 503, "fail_times": 1, "key": "flaky-once"}),
        chat_line("ok-2"),
    ]
    batch = run_batch(client, lines)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 2)
    output = {line["custom_id"]: line for line in read_lines(client, batch.output_file_id)}
    errors = {line["custom_id"]: line for line in read_lines(client, batch.error_file_id)}
    assert set(output) == {"ok-1", "ok-2", "flaky"}
    assert set(errors) == {"bad-request", "always-500"}
    assert errors["bad-request"]["response"]["status_code"] == 400
    assert errors["always-500"]["response"]["status_code"] == 500
    for line in errors.values():
        assert line["error"] is None
        assert "error" in line["response"]["body"]


def test_all_failed_batch_has_no_output_file(client: OpenAI) -> None:
    batch = run_batch(client, [chat_line(f"f{i}", fake={"status": 404}) for i in range(3)])
    assert batch.status == "completed"
    assert batch.output_file_id is None
    assert len(read_lines(client, batch.error_file_id)) == 3


def test_retries_are_bounded(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    batch = run_batch(client, [chat_line("r", fake={"status": 429, "key": "bounded-429"})])
    assert batch.request_counts is not None
    assert batch.request_counts.failed == 1
    assert upstream.stats()["by_key"]["bounded-429"] == 3  # max_attempts in the test config
