"""The lines of output and error files, built without re-decoding what the upstream sent."""

from __future__ import annotations

from typing import Any

import msgspec

from overnight.domain.models import ResultKind, ResultRow, Usage

BATCH_CANCELLED = "batch_cancelled"
BATCH_EXPIRED = "batch_expired"
UPSTREAM_ERROR = "upstream_error"  # the code of a failed line whose answer names none
NOT_RUN_MESSAGES = {
    BATCH_CANCELLED: "This request was not executed because the batch was cancelled.",
    BATCH_EXPIRED: "This request could not be executed before the completion window expired.",
}

_encode = msgspec.json.encode


class _Details(msgspec.Struct):
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class _UsageProbe(msgspec.Struct):
    # chat/completions/embeddings name them prompt/completion; responses names them input/output
    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None


class _BodyProbe(msgspec.Struct):
    usage: _UsageProbe | None = None


_probe_decoder = msgspec.json.Decoder(_BodyProbe)


class _AnyObject(msgspec.Struct):
    """Decoding into this checks that bytes are one JSON object, skipping (not building) its fields."""


_object_decoder = msgspec.json.Decoder(_AnyObject)


class _ErrorFields(msgspec.Struct):
    code: Any = None
    type: Any = None


class _ErrorProbe(msgspec.Struct):
    error: _ErrorFields | None = None


_error_decoder = msgspec.json.Decoder(_ErrorProbe)


def error_code_of(body: bytes) -> str:
    """What an error answer's `error` says went wrong: its `code`, else its `type` (some servers send
    a number as the code, or none), else UPSTREAM_ERROR."""
    try:
        error = _error_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return UPSTREAM_ERROR
    if error is not None:
        for value in (error.code, error.type):
            if isinstance(value, str) and value:
                return value
    return UPSTREAM_ERROR


def object_usage(body: bytes) -> Usage:
    """The usage an answer reports, reading the body once; ValueError when it is not a JSON object."""
    try:
        return _usage(_probe_decoder.decode(body).usage)
    except msgspec.ValidationError:
        _object_decoder.decode(body)  # an object whose `usage` has another shape, or no object at all
        return Usage()


def usage_of(body: bytes) -> Usage:
    """Token usage reported in an upstream response body; zero when absent or unreadable."""
    try:
        return object_usage(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Usage()


def _usage(found: _UsageProbe | None) -> Usage:
    if found is None:
        return Usage()
    input_details = found.input_tokens_details or found.prompt_tokens_details
    output_details = found.output_tokens_details or found.completion_tokens_details
    return Usage(
        input_tokens=found.input_tokens or found.prompt_tokens,
        output_tokens=found.output_tokens or found.completion_tokens,
        cached_tokens=input_details.cached_tokens if input_details else 0,
        reasoning_tokens=output_details.reasoning_tokens if output_details else 0,
    )


def response_row(
    line_no: int,
    line_id: str,
    custom_id: str,
    status: int,
    request_id: str,
    body: bytes,
    usage: Usage | None = None,
    *,
    answered: bool = True,
) -> ResultRow:
    """The result of a request that got an HTTP answer; `body` must be a JSON object's bytes.
    `usage` is what the body reports, when the caller has already read it. `answered` is False when
    no answer came and `status` and `body` say why (the row then has no upstream status)."""
    line = b"".join(
        (
            b'{"id":',
            _encode(line_id),
            b',"custom_id":',
            _encode(custom_id),
            b',"response":{"status_code":',
            str(status).encode(),
            b',"request_id":',
            _encode(request_id),
            b',"body":',
            body,
            b'},"error":null}',
        )
    )
    if not 200 <= status < 300:
        code = error_code_of(body)
        return ResultRow(line_no, ResultKind.FAILED, line, Usage(), code, status if answered else None)
    if usage is None:
        usage = usage_of(body)
    return ResultRow(line_no, ResultKind.SUCCEEDED, line, usage)


def not_run_row(
    line_no: int, line_id: str, custom_id: str, code: str, last_failure: str | None = None
) -> ResultRow:
    """A line that never ran to a result because the batch was cancelled or expired; `last_failure`
    says what its last attempt met, when it had one."""
    message = NOT_RUN_MESSAGES[code]
    if last_failure:
        message = f"{message} Its last attempt failed: {last_failure}"
    line = _encode(
        {
            "id": line_id,
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )
    return ResultRow(line_no, ResultKind.NOT_RUN, line, error_code=code)
