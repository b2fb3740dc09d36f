"""Synchronous requests (docs/sync.md): what Overnight reads of their bodies, the usage a streamed
answer reports, and the usage it keeps per day. Pure: no I/O.

The body is forwarded as sent (byte for byte), except `service_tier`, which a backend that does not
forward it never sees (`without_service_tier`). Overnight reads only `model`, `stream`,
`service_tier` and `background`, with a typed decoder that skips every other field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from overnight.domain.errors import InvalidRequest
from overnight.domain.models import Usage
from overnight.domain.results import object_usage

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
RESPONSES, MODERATIONS = "/v1/responses", "/v1/moderations"
SYNC_ENDPOINTS = (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, MODERATIONS)
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"  # OpenAI's, when a moderation names none
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")  # the values OpenAI accepts
INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


class Tier(enum.StrEnum):
    """How Overnight runs a synchronous request, and how its usage is priced (docs/costs.md)."""

    DEFAULT = "default"  # online: before batch work, at synchronous prices
    FLEX = "flex"  # at batch priority, at batch prices


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """What Overnight needs to know of one synchronous request."""

    endpoint: str
    model: str
    stream: bool
    tier: Tier
    background: bool  # `/v1/responses` with `background: true` (docs/sync.md)
    has_service_tier: bool  # the body may name one (`without_service_tier` then has work to do)


class _Probe(msgspec.Struct):
    model: Any = None
    stream: Any = None
    service_tier: Any = None
    background: Any = None


_probe = msgspec.json.Decoder(_Probe)
_any = msgspec.json.Decoder()
_encode = msgspec.json.encode


def read_request(endpoint: str, body: bytes) -> SyncRequest:
    """The request's routing facts; InvalidRequest (OpenAI's 400) when the body cannot be one."""
    try:
        probe = _probe.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_request_body") from None
    except msgspec.DecodeError:
        raise InvalidRequest(INVALID_JSON, code="invalid_json") from None
    model = probe.model
    if model is None and endpoint == MODERATIONS:
        model = DEFAULT_MODERATION_MODEL
    if model is None:
        raise InvalidRequest(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            f"Invalid type for 'model': expected a non-empty string, but got {_kind(model)} instead.",
            param="model",
            code="invalid_type",
        )
    tier = probe.service_tier
    if tier is not None and tier not in SERVICE_TIERS:
        allowed = ", ".join(f"'{value}'" for value in SERVICE_TIERS)
        raise InvalidRequest(
            f"Invalid value for 'service_tier': {_encode(tier).decode()}. Supported values are: {allowed}.",
            param="service_tier",
            code="invalid_value",
        )
    return SyncRequest(
        endpoint=endpoint,
        model=model,
        stream=_flag(probe.stream, "stream"),
        tier=Tier.FLEX if tier == "flex" else Tier.DEFAULT,
        background=endpoint == RESPONSES and _flag(probe.background, "background"),
        has_service_tier=tier is not None or b'"service_tier"' in body,  # null, or maybe in a string
    )


def _flag(value: Any, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise InvalidRequest(
        f"Invalid type for '{name}': expected a boolean, but got {_kind(value)} instead.",
        param=name,
        code="invalid_type",
    )


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else "null"


def without_service_tier(body: bytes) -> bytes:
    """The body without its `service_tier` (re-encoded; only called when it has one)."""
    decoded = _any.decode(body)
    decoded.pop("service_tier", None)
    return _encode(decoded)


class _EventProbe(msgspec.Struct):
    type: Any = None
    response: msgspec.Raw = msgspec.Raw(b"null")


_event = msgspec.json.Decoder(_EventProbe)
MAX_EVENT_LINE = 8 * 1024 * 1024  # a longer line without its end is not read for usage


class StreamUsage:
    """The usage a stream of server-sent events reports, read as its chunks pass by.

    The last `data:` line that carries tokens wins: chat and completion streams carry usage in their
    last chunk when asked (`stream_options: {"include_usage": true}`), a responses stream in the
    `response` of `response.completed` (or `.incomplete`, `.failed`). Each event's JSON is expected on
    one `data:` line, as OpenAI, vLLM and llama.cpp write it; others are skipped.
    """

    def __init__(self) -> None:
        self._tail = b""
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> None:
        if b"\n" not in chunk:
            if len(self._tail) < MAX_EVENT_LINE:
                self._tail += chunk
            return
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"data:") and b'"usage"' in line:
                self._read(line[5:].strip())

    def _read(self, data: bytes) -> None:
        try:
            usage = object_usage(data)
            if not (usage.input_tokens or usage.output_tokens):
                event = _event.decode(data)
                if isinstance(event.type, str) and bytes(event.response) != b"null":
                    usage = object_usage(bytes(event.response))
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if usage.input_tokens or usage.output_tokens:
            self.usage = usage


@dataclass(frozen=True, slots=True)
class SyncUsage:
    """The usage of one project's synchronous requests for one model and tier on one UTC day (`day`:
    its first second), as the store adds it up."""

    day: int
    project: str
    model: str
    tier: Tier
    requests: int
    usage: Usage
