"""`overnight submit`'s reading of result lines: which failures are retried."""

from __future__ import annotations

import json
from typing import Any

import pytest

from overnight.client.outcomes import BATCH_FAILED, failed_batch_code, not_run_line, read_outcome


def _answered(status: int, body: dict[str, Any]) -> bytes:
    line = {"id": "r", "custom_id": "x", "response": {"status_code": status, "request_id": "q", "body": body}}
    return json.dumps({**line, "error": None}).encode()


def _error(status: int, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": "no", "type": "server_error", "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (400, False),
        (401, False),
        (404, False),
        (422, False),
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
    ],
)
def test_answers_with_an_error_status(status: int, retryable: bool) -> None:
    outcome = read_outcome(_answered(status, _error(status, f"c{status}")))
    assert not outcome.ok
    assert outcome.retryable is retryable
    assert outcome.status == status
    assert outcome.code == f"c{status}"


def test_a_success_reports_its_usage_either_way_it_is_named() -> None:
    chat = read_outcome(_answered(200, {"usage": {"prompt_tokens": 5, "completion_tokens": 7}}))
    response = read_outcome(_answered(200, {"usage": {"input_tokens": 4, "output_tokens": 6}}))
    assert chat.ok
    assert not chat.retryable
    assert chat.code is None
    assert (chat.usage.input_tokens, chat.usage.output_tokens) == (5, 7)
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 6)


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("batch_expired", True),
        ("batch_cancelled", True),
        ("no_result", True),
        ("token_limit_exceeded", True),
        ("upstream_unreachable", True),  # no answer at all: worth another try
        ("too_many_tasks", False),
        ("model_not_found", False),
        ("invalid_json_line", False),
        (BATCH_FAILED, False),
    ],
)
def test_lines_without_an_answer(code: str, retryable: bool) -> None:
    outcome = read_outcome(not_run_line("x", code, "why"))
    assert not outcome.ok
    assert outcome.status is None
    assert outcome.code == code
    assert outcome.retryable is retryable


def test_an_error_without_a_code_counts_as_no_result() -> None:
    line = json.dumps({"id": None, "custom_id": "x", "response": None, "error": {"message": "?"}}).encode()
    outcome = read_outcome(line)
    assert outcome.code == "no_result"
    assert outcome.retryable


@pytest.mark.parametrize("line", [b"", b"[]", b"not json", b'{"response": null}', b'{"custom_id": 5}'])
def test_lines_that_are_no_result_are_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="not a batch result line"):
        read_outcome(line)


@pytest.mark.parametrize(
    ("code", "given"),
    [
        ("token_limit_exceeded", "token_limit_exceeded"),
        ("too_many_tasks", "too_many_tasks"),
        ("something_new", BATCH_FAILED),
        (None, BATCH_FAILED),
    ],
)
def test_the_code_a_refused_batch_gives_its_lines(code: str | None, given: str) -> None:
    assert failed_batch_code(code) == given
