"""Background responses (`POST /v1/responses` with `background: true`): the Response object OpenAI's
background mode shows at each step, worked out from the one-line batch that runs it. Pure.

A background response `resp_<s>` runs as the hidden batch `batch_<s>` of its project (the same suffix),
whose one input line, `file-<s>i`, is the request without `background`. Its state is the batch's:

    validating                        -> queued
    in_progress, finalizing           -> in_progress
    completed, the line succeeded     -> the upstream's Response (its status: completed or incomplete)
    completed, the line failed        -> failed, with the upstream's error
    cancelling, cancelled             -> cancelled (no output, whatever the line did)
    expired                           -> failed (it did not run within its window)
    failed (the line was refused)     -> failed

Deleting a response removes all of it; one not ended yet is cancelled first (services/background.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from overnight.domain.errors import InvalidRequest
from overnight.domain.ids import BATCH_PREFIX, FILE_PREFIX
from overnight.domain.models import Batch, BatchStatus

RESPONSE_PREFIX: Final = "resp_"
MARKER: Final = "overnight_background_response"  # the hidden batch's metadata key: its response's id
_RESPONSE_ID = re.compile(r"^resp_[0-9a-f]{32}$")
S = BatchStatus

QUEUED: Final = "queued"
IN_PROGRESS: Final = "in_progress"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
INCOMPLETE: Final = "incomplete"
_STATUS_OF_BATCH: Final = {
    S.VALIDATING: QUEUED,
    S.IN_PROGRESS: IN_PROGRESS,
    S.FINALIZING: IN_PROGRESS,
    S.CANCELLING: CANCELLED,
    S.CANCELLED: CANCELLED,
    S.EXPIRED: FAILED,
    S.FAILED: FAILED,
}

# What the Response object echoes of the request, and its value when the request does not say (OpenAI's).
_ECHOED: Final[Mapping[str, Any]] = {
    "instructions": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "prompt": None,
    "prompt_cache_key": None,
    "reasoning": None,
    "safety_identifier": None,
    "service_tier": "auto",
    "store": True,
    "temperature": None,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": None,
    "top_p": None,
    "truncation": "disabled",
    "user": None,
}

# ResponseError.code is an enum; an upstream code outside it is named by the answer's HTTP status.
ERROR_CODES: Final = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)


def response_id_of_batch(batch_id: str) -> str:
    return RESPONSE_PREFIX + batch_id.removeprefix(BATCH_PREFIX)


def batch_id_of_response(response_id: str) -> str | None:
    """The hidden batch of `response_id`; None when it is no id this server makes."""
    if not _RESPONSE_ID.match(response_id):
        return None
    return BATCH_PREFIX + response_id.removeprefix(RESPONSE_PREFIX)


def input_file_id(batch_id: str) -> str:
    """The hidden batch's one-line input file (`ids.output_file_id` ends in `o`, `error_file_id` in `e`)."""
    return f"{FILE_PREFIX}{batch_id.removeprefix(BATCH_PREFIX)}i"


def is_background(batch: Batch) -> bool:
    """Whether `batch` runs a background response (its events and lists are not a batch's)."""
    return batch.metadata is not None and MARKER in batch.metadata


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A background response as the store keeps it: its batch, and the Response as created."""

    batch: Batch
    created: dict[str, Any]


def upstream_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request a background response sends upstream: `body` without `background` (and without a
    false `stream`); OpenAI's refusals of what background mode cannot do."""
    if body.get("background") is not True:
        raise InvalidRequest(
            "Only a request with 'background': true runs in the background.", param="background"
        )
    if body.get("store") is False:
        raise InvalidRequest(
            "Background responses are stored: 'store' cannot be false when 'background' is true.",
            param="store",
            code="invalid_value",
        )
    if body.get("stream") is True:
        raise InvalidRequest(
            "Streaming a background response is not supported yet: leave out 'stream' and poll "
            "GET /v1/responses/{response_id} until the response leaves 'queued' and 'in_progress'.",
            param="stream",
            code="unsupported_value",
        )
    return {key: value for key, value in body.items() if key not in ("background", "stream")}


def created_response(response_id: str, request: Mapping[str, Any], created_at: int) -> dict[str, Any]:
    """The Response `POST /v1/responses` answers at once: queued, echoing the request's settings."""
    echoed = {
        name: default if request.get(name) is None else request[name] for name, default in _ECHOED.items()
    }
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": QUEUED,
        "background": True,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "model": request.get("model"),
        "output": [],
        "usage": None,
        **echoed,
    }


def current_response(stored: StoredResponse, line: Mapping[str, Any] | None) -> dict[str, Any]:
    """The Response now. `line`: the batch's output or error file line, once it ended (None before, or
    when it has none)."""
    batch, created = stored.batch, stored.created
    if batch.status is S.COMPLETED and line is not None:
        return _finished(created, batch, line)
    status = _STATUS_OF_BATCH.get(batch.status, FAILED)
    response = {**created, "status": status}
    if status == FAILED:
        response["error"] = {"code": "server_error", "message": _failure_message(batch, line)}
    return response


def _finished(created: dict[str, Any], batch: Batch, line: Mapping[str, Any]) -> dict[str, Any]:
    answer = line.get("response")
    body = answer.get("body") if isinstance(answer, Mapping) else None
    status_code = answer.get("status_code") if isinstance(answer, Mapping) else None
    if isinstance(status_code, int) and 200 <= status_code < 300 and isinstance(body, Mapping):
        upstream = {key: value for key, value in body.items() if value is not None or key not in created}
        status = upstream.get("status")
        finished = {
            **created,
            **upstream,
            "id": created["id"],
            "object": "response",
            "created_at": created["created_at"],
            "background": True,
            "status": status if status in (COMPLETED, INCOMPLETE) else COMPLETED,
        }
        if finished["status"] == COMPLETED and finished.get("completed_at") is None:
            finished["completed_at"] = batch.completed_at
        if isinstance(finished.get("usage"), Mapping):
            finished["usage"] = response_usage(finished["usage"])
        return finished
    return {**created, "status": FAILED, "error": upstream_error(status_code, body, line.get("error"))}


def response_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream's `usage` with every count ResponseUsage requires (0 for those it leaves out: servers
    other than OpenAI's, and older ones, send fewer details)."""
    counts = {name: _count(usage.get(name)) for name in ("input_tokens", "output_tokens")}
    total = usage.get("total_tokens")
    input_details = usage.get("input_tokens_details")
    input_details = input_details if isinstance(input_details, Mapping) else {}
    output_details = usage.get("output_tokens_details")
    output_details = output_details if isinstance(output_details, Mapping) else {}
    return {
        **usage,
        **counts,
        "total_tokens": _count(total) if total is not None else sum(counts.values()),
        "input_tokens_details": {
            **input_details,
            "cached_tokens": _count(input_details.get("cached_tokens")),
            "cache_write_tokens": _count(input_details.get("cache_write_tokens")),
        },
        "output_tokens_details": {
            **output_details,
            "reasoning_tokens": _count(output_details.get("reasoning_tokens")),
        },
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def upstream_error(status: object, body: object, line_error: object) -> dict[str, str]:
    """A failed line's error as a ResponseError: the upstream's message as it was, and its code when
    ResponseError allows it, else the code its HTTP status stands for."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        error = line_error if isinstance(line_error, Mapping) else {}
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"The model server answered HTTP {status}." if status else "The request failed."
    code = error.get("code")
    if code not in ERROR_CODES:
        code = _code_for_status(status)
    return {"code": str(code), "message": message}


def _code_for_status(status: object) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    if isinstance(status, int) and 400 <= status < 500:
        return "invalid_prompt"
    return "server_error"


def _failure_message(batch: Batch, line: Mapping[str, Any] | None) -> str:
    error = line.get("error") if line is not None else None
    said = error.get("message") if isinstance(error, Mapping) else None
    if batch.status is S.EXPIRED:
        window = batch.completion_window
        base = f"The response did not run within its completion window of {window}."
        last = said.partition(" Its last attempt failed: ")[2] if isinstance(said, str) else ""
        return f"{base} Its last attempt failed: {last}" if last else base
    if batch.errors:
        return batch.errors[0].message
    return said if isinstance(said, str) and said else "The response could not be run."


def cancel_refusal(status: str) -> str | None:
    """Why a response in `status` cannot be cancelled, as OpenAI says it; None when it can be (queued
    or in progress) or already is (cancelling again answers the cancelled response)."""
    if status in (QUEUED, IN_PROGRESS, CANCELLED):
        return None
    article = "an" if status[0] in "aeiou" else "a"
    return f"Cannot cancel {article} {status} response."


def deleted_response(response_id: str) -> dict[str, Any]:
    """What `DELETE /v1/responses/{response_id}` answers, as OpenAI's API does."""
    return {"id": response_id, "object": "response.deleted", "deleted": True}
