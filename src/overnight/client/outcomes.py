"""What one line of an output or error file says: success or failure, whether a failure deserves another
try, and the tokens it used. Pure.

A failure is retried when it may go better next time: an HTTP answer 408, 409, 429 or 5xx, a line that
got no answer at all (`response` null: the batch expired or was cancelled before it ran, the upstream was
unreachable), or a line the batch ended without. Every other failure, such as a 400 from the model, is
permanent, and so are the validation errors of a batch the server refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from overnight.domain.models import Usage
from overnight.domain.results import BATCH_CANCELLED, BATCH_EXPIRED, error_code_of, usage_of

__all__ = [
    "BATCH_CANCELLED",
    "BATCH_EXPIRED",
    "BATCH_FAILED",
    "NO_RESULT",
    "Outcome",
    "failed_batch_code",
    "is_retryable_status",
    "not_run_line",
    "read_outcome",
]

NO_RESULT: Final = "no_result"  # the batch ended without a line for this request
BATCH_FAILED: Final = "batch_failed"  # the server refused the whole batch for a reason not retried
TOKEN_LIMIT_EXCEEDED: Final = "token_limit_exceeded"  # OpenAI: too many tokens enqueued; later it fits
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
# Codes of lines without an answer that no second try can fix: a refused batch's validation errors.
PERMANENT_CODES: Final = frozenset(
    {
        "invalid_request",
        "invalid_request_error",
        "invalid_json_line",
        "missing_required_parameter",
        "invalid_url",
        "invalid_method",
        "duplicate_custom_id",
        "model_not_found",
        "mismatched_model",
        "streaming_unsupported",
        "too_many_embedding_inputs",
        "too_many_tasks",
        "empty_file",
        BATCH_FAILED,
    }
)
_RETRYABLE_BATCH_ERRORS: Final = frozenset({TOKEN_LIMIT_EXCEEDED, "rate_limit_exceeded", "server_error"})
_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Outcome:
    custom_id: str
    ok: bool
    retryable: bool
    code: str | None  # a failure's error code, else None
    status: int | None  # the HTTP status of the answer, None when there was none
    usage: Usage


class _Error(msgspec.Struct):
    code: object = None
    message: object = None


class _Response(msgspec.Struct):
    status_code: int = 0
    body: msgspec.Raw = msgspec.Raw(b"null")


class _ResultLine(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: _Error | None = None


_decoder: Final = msgspec.json.Decoder(_ResultLine)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def failed_batch_code(code: str | None) -> str:
    """The code given to the lines of a batch the server refused with `code`: the code itself when
    it says the batch may be accepted later or is a known validation error, else `batch_failed`."""
    if code is not None and (code in _RETRYABLE_BATCH_ERRORS or code in PERMANENT_CODES):
        return code
    return BATCH_FAILED


def read_outcome(line: bytes) -> Outcome:
    """The outcome of one result line; ValueError for a line that is not one (no string custom_id)."""
    try:
        result = _decoder.decode(line)
    except msgspec.DecodeError as problem:  # ValidationError is a DecodeError
        raise ValueError(f"not a batch result line: {problem}") from problem
    response = result.response
    if response is not None and response.status_code:
        status = response.status_code
        body = bytes(response.body)
        if 200 <= status < 300:
            return Outcome(result.custom_id, True, False, None, status, usage_of(body))
        return Outcome(
            result.custom_id, False, is_retryable_status(status), error_code_of(body), status, Usage()
        )
    error = result.error
    code = error.code if error is not None and isinstance(error.code, str) and error.code else NO_RESULT
    return Outcome(result.custom_id, False, code not in PERMANENT_CODES, code, None, Usage())


def not_run_line(custom_id: str, code: str, message: str) -> bytes:
    """An error-file line, OpenAI's shape, for a request that got no result line from its batch."""
    return _encode(
        {"id": None, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}
    )
