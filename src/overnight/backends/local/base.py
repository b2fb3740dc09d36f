"""What a local model offers the local backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import msgspec

from overnight.domain.models import Usage


class LocalModel(Protocol):
    """One model that answers some OpenAI endpoints in-process.

    `handle` gets the decoded JSON request body (its `model` may be an alias) and returns the HTTP
    status and the JSON response body, shaped exactly like OpenAI's answer for that endpoint (or
    an OpenAI error object with a 4xx status for a request the model cannot serve). Heavy work
    runs off the event loop; `handle` may be called many times concurrently.
    """

    name: str
    endpoints: frozenset[str]

    async def start(self) -> None:
        """Load the model (may take a while; called once before the first request)."""
        ...

    async def close(self) -> None: ...

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        """Answer one request; `model_name` is the name to report in the response (the alias used)."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class LocalStream:
    """A streamed answer under way: `events` are the bytes of its server-sent events as the model writes
    them; `close` (always called, read to the end or not) stops the generation; `usage` is what it has
    used so far (final once closed)."""

    events: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    usage: Callable[[], Usage]


@runtime_checkable
class StreamingModel(LocalModel, Protocol):
    """A LocalModel that can also stream its answers (the others refuse `stream: true`)."""

    async def stream(
        self, endpoint: str, request: dict[str, Any], model_name: str
    ) -> tuple[int, bytes] | LocalStream:
        """Answer one request with `stream: true`: an event stream, or an error answer as `handle` gives
        one when the request fails before any event."""
        ...


class Refusal(Exception):
    """A request this model cannot serve as sent: a 400 with OpenAI's error shape."""

    def __init__(self, message: str, param: str | None, code: str | None = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def answer(self) -> tuple[int, bytes]:
        return error_answer(400, self.message, param=self.param, code=self.code)


def is_int(value: object) -> bool:
    """A JSON integer (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def as_entries(value: Any, param: str, *, limit: int, shape: str, noun: str) -> list[Any]:
    """OpenAI's `string | string[] | token[] | token[][]` parameter as a list of entries, a lone string
    or token array being one entry; Refusal (with `shape` as its message) for anything else."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(is_int(v) for v in value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise Refusal(shape, param)
    if len(value) > limit:
        raise Refusal(f"'{param}' holds {len(value)} {noun}; at most {limit} are allowed.", param)
    return value


def error_answer(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> tuple[int, bytes]:
    """An OpenAI-shaped error answer, as `LocalModel.handle` returns it."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return status, msgspec.json.encode({"error": error})
