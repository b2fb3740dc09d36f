"""Background responses' pure rules (domain/background.py): ids, the Response at each batch status, the
upstream's error as a ResponseError, which cancels OpenAI refuses, and what a delete answers. Every
Response built here is checked against the official SDK's `Response` type in strict mode, as a client
would read it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai._models import validate_type
from openai.types.responses import Response

from overnight.domain.background import (
    ERROR_CODES,
    MARKER,
    StoredResponse,
    batch_id_of_response,
    cancel_refusal,
    created_response,
    current_response,
    deleted_response,
    input_file_id,
    is_background,
    response_id_of_batch,
    upstream_body,
    upstream_error,
)
from overnight.domain.errors import InvalidRequest
from overnight.domain.models import Batch, BatchError, BatchStatus

S = BatchStatus
SUFFIX = "0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000


def a_stored(status: BatchStatus = S.VALIDATING, **changes: Any) -> StoredResponse:
    batch = Batch(
        f"batch_{SUFFIX}",
        "proj",
        "/v1/responses",
        input_file_id(f"batch_{SUFFIX}"),
        "24h",
        status,
        NOW,
        NOW + 86400,
        metadata={MARKER: f"resp_{SUFFIX}"},
        **changes,
    )
    request = {"model": "fake-chat", "input": "hi", "temperature": 0.2, "metadata": {"k": "v"}}
    return StoredResponse(batch, created_response(f"resp_{SUFFIX}", request, NOW))


def strict(response: dict[str, Any]) -> Response:
    parsed = validate_type(type_=Response, value=response)
    assert isinstance(parsed, Response)
    return parsed


def success_line(body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {
        "id": "batch_req_1",
        "custom_id": f"resp_{SUFFIX}",
        "response": {"status_code": status, "body": body},
    }


UPSTREAM = {
    "id": "resp_upstream",
    "object": "response",
    "created_at": NOW + 5,
    "status": "completed",
    "model": "fake-chat",
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "hello", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 1,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 4,
    },
}


def test_ids_pair_a_response_with_its_batch_and_refuse_others() -> None:
    assert response_id_of_batch(f"batch_{SUFFIX}") == f"resp_{SUFFIX}"
    assert batch_id_of_response(f"resp_{SUFFIX}") == f"batch_{SUFFIX}"
    assert input_file_id(f"batch_{SUFFIX}") == f"file-{SUFFIX}i"
    for other in ("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b", "batch_x", "resp_../x", ""):
        assert batch_id_of_response(other) is None


def test_the_created_response_is_queued_and_echoes_the_request() -> None:
    response = strict(a_stored().created)
    assert (response.status, response.background, response.output) == ("queued", True, [])
    assert (response.model, response.temperature, response.metadata) == ("fake-chat", 0.2, {"k": "v"})
    assert (response.tool_choice, response.tools, response.parallel_tool_calls) == ("auto", [], True)
    assert response.completed_at is None
    assert is_background(a_stored().batch)
    assert not is_background(dataclasses.replace(a_stored().batch, metadata=None))


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (S.VALIDATING, "queued"),
        (S.IN_PROGRESS, "in_progress"),
        (S.FINALIZING, "in_progress"),
        (S.CANCELLING, "cancelled"),
        (S.CANCELLED, "cancelled"),
    ],
)
def test_unfinished_and_cancelled_batches_show_their_status(status: BatchStatus, shown: str) -> None:
    response = strict(current_response(a_stored(status), None))
    assert response.status == shown
    assert response.output == []
    assert response.error is None


def test_a_completed_line_is_the_upstreams_response_under_our_id() -> None:
    stored = a_stored(S.COMPLETED, completed_at=NOW + 9)
    response = strict(current_response(stored, success_line(UPSTREAM)))
    assert (response.id, response.created_at, response.background) == (f"resp_{SUFFIX}", NOW, True)
    assert (response.status, response.completed_at, response.output_text) == ("completed", NOW + 9, "hello")
    assert response.usage is not None
    assert response.usage.total_tokens == 4
    assert response.metadata == {"k": "v"}  # the upstream said nothing: the request's stays


def test_an_incomplete_upstream_response_stays_incomplete() -> None:
    body = {**UPSTREAM, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    response = strict(current_response(a_stored(S.COMPLETED), success_line(body)))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert cancel_refusal("incomplete") == "Cannot cancel an incomplete response."


def test_a_failed_line_passes_the_upstreams_error_through() -> None:
    body = {"error": {"message": "Bad things upstream.", "type": "server_error", "code": "fake_500"}}
    response = strict(current_response(a_stored(S.COMPLETED), success_line(body, 500)))
    assert response.status == "failed"
    assert response.error is not None
    assert (response.error.code, response.error.message) == ("server_error", "Bad things upstream.")
    throttled = {"error": {"message": "Slow down.", "code": "rate_limit_exceeded"}}
    assert upstream_error(429, throttled, None) == {"code": "rate_limit_exceeded", "message": "Slow down."}
    assert upstream_error(400, {"error": {"message": "No."}}, None)["code"] == "invalid_prompt"
    assert upstream_error(None, None, {"code": "x", "message": "No answer."}) == {
        "code": "server_error",
        "message": "No answer.",
    }


@given(
    status=st.one_of(st.none(), st.integers(0, 999)), body=st.from_type(object), error=st.from_type(object)
)
def test_any_failure_makes_a_valid_response_error(status: int | None, body: object, error: object) -> None:
    found = upstream_error(status, body, error)
    assert found["code"] in ERROR_CODES
    assert found["message"]


def test_an_expired_or_refused_batch_fails_saying_why() -> None:
    last = "This request could not be executed ... Its last attempt failed: HTTP 503 from the model server."
    expired = current_response(
        a_stored(S.EXPIRED), {"response": None, "error": {"code": "batch_expired", "message": last}}
    )
    assert strict(expired).status == "failed"
    assert expired["error"]["message"].endswith("Its last attempt failed: HTTP 503 from the model server.")
    refused = a_stored(S.FAILED, errors=(BatchError("model_not_found", "No such model."),))
    assert (
        strict(current_response(refused, None)).error
        == strict({**refused.created, "error": {"code": "server_error", "message": "No such model."}}).error
    )


def test_cancels_that_openai_refuses() -> None:
    assert [cancel_refusal(s) for s in ("queued", "in_progress", "cancelled")] == [None, None, None]
    assert cancel_refusal("completed") == "Cannot cancel a completed response."
    assert cancel_refusal("failed") == "Cannot cancel a failed response."


def test_the_upstream_body_drops_background_and_refuses_what_it_cannot_do() -> None:
    body = {"model": "m", "input": "hi", "background": True, "stream": False, "service_tier": "flex"}
    assert upstream_body(body) == {"model": "m", "input": "hi", "service_tier": "flex"}
    for bad, param in (
        ({"store": False}, "store"),
        ({"stream": True}, "stream"),
        ({"background": False}, "background"),
    ):
        with pytest.raises(InvalidRequest) as raised:
            upstream_body({"model": "m", "background": True, **bad})
        assert raised.value.param == param


def test_a_delete_answers_as_openai_does() -> None:
    response_id = f"resp_{SUFFIX}"
    assert deleted_response(response_id) == {"id": response_id, "object": "response.deleted", "deleted": True}
