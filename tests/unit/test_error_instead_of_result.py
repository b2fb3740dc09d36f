"""A 2xx answer whose body is only an error is a failed attempt (backends/http.py's module docstring)."""

from __future__ import annotations

import json

import pytest

from overnight.backends.http import normalize_body


@pytest.mark.parametrize("status", [200, 201])
def test_a_success_status_with_only_an_error_becomes_a_502_that_quotes_it(status: int) -> None:
    body = b'{"error": {"message": "The model is  overloaded.", "type": "server_error", "code": null}}'
    final, data = normalize_body(status, body)
    assert final == 502
    error = json.loads(data)["error"]
    assert error["code"] == "upstream_invalid_response"
    assert error["message"] == (
        f"The upstream answered HTTP {status} with an error instead of a result: The model is overloaded."
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "resp_1", "object": "response", "status": "failed", "error": {"message": "no"}}',
        b'{"object": "chat.completion", "choices": [], "error": null}',
        b'{"error": "a string, not an OpenAI error"}',
        b'{"error": {"code": "x"}}',  # no message: nothing to quote, kept as the upstream sent it
        b'{"choices": [{"message": {"content": "the word \\"error\\" in a reply"}}]}',
    ],
)
def test_results_that_mention_an_error_stay_results(body: bytes) -> None:
    assert normalize_body(200, body) == (200, body)


def test_an_error_status_keeps_its_error_body() -> None:
    body = b'{"error": {"message": "Rate limit reached.", "type": "rate_limit_error"}}'
    assert normalize_body(429, body) == (429, body)
