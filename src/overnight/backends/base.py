"""The model backend interface. Every implementation passes tests/contract/test_backend_contract.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from overnight.domain.models import Usage


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one try went. The engine's scheduler decides what follows (engine/retry.py).

    `body` is always the bytes of a JSON object on one line: the upstream's own body when it was
    one, otherwise an OpenAI-shaped `{"error": {...}}` describing what went wrong.
    `answered` is False when no HTTP answer came (connection refused or reset, timeout); `status`
    and `body` then describe that as a 502 (`upstream_unreachable`) or 504 (`upstream_timeout`)
    result. `reached` is False when not even a connection could be made, so the request never left.
    `retry_after` is the delay the upstream asked for (seconds), `should_retry` its `x-should-retry`
    verdict when it gave one.
    """

    status: int
    body: bytes
    request_id: str
    answered: bool = True
    reached: bool = True
    retry_after: float | None = None
    should_retry: bool | None = None
    usage: Usage | None = None  # what the body reports, when the backend already read it


@dataclass(frozen=True, slots=True, eq=False)
class StreamAnswer:
    """A 2xx answer whose body is a stream of server-sent events, read as it arrives.

    `chunks` yields the body's bytes as they come (any split; an event may span chunks) and ends with
    the stream; it raises `ConnectionError` or `TimeoutError` when the stream is cut off. `close`
    stops reading and frees the connection; the caller always calls it, also after the last chunk.
    `usage`, from a backend that counts the tokens itself (the local models), gives them once closed,
    whether the stream reports them or not; without it they are read from the events.
    """

    status: int
    request_id: str
    content_type: str
    chunks: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    usage: Callable[[], Usage] | None = None


class Backend(Protocol):
    name: str
    max_concurrency: int

    def serves(self, model: str) -> bool:
        """Whether this backend takes requests for `model` (matched against its patterns)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        """POST `body` (raw JSON) to `endpoint` (e.g. `/v1/chat/completions`) once, with no retries
        and no concurrency bound of its own: the scheduler owns both."""
        ...

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        """POST `body` once asking for a streamed answer (the body says `"stream": true`): a
        `StreamAnswer` when the answer is a 2xx event stream, otherwise the whole answer as an `Attempt`
        exactly as `attempt` gives it (an error, no answer, or a backend that cannot stream refusing
        with a 400). No retries and no concurrency bound of its own, as for `attempt`."""
        ...


_IN_WORDS: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionResetError, "the upstream reset the connection"),
    (ConnectionRefusedError, "the upstream refused the connection (is it running, on that port?)"),
    (BrokenPipeError, "the upstream closed the connection while the request was being sent"),
    (ConnectionAbortedError, "the connection was aborted"),
)


def describe_exception(exc: BaseException) -> str:
    """Why a request to an upstream got no answer, in words a user of the error file understands: the
    common socket failures by what happened, anything else by its class and message."""
    text = str(exc)
    for kind, words in _IN_WORDS:
        if isinstance(exc, kind):
            return words
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
