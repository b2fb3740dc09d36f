"""The model backend interface. Every implementation passes tests/contract/test_backend_contract.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from overnight.domain.models import Usage


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """The final answer for one request after the backend's retries.

    `body` is always the bytes of a JSON object: the upstream's own body when it was JSON,
    otherwise an OpenAI-shaped `{"error": {...}}` describing what went wrong.
    `status` is the HTTP status; when no HTTP answer was had, 502 (connection error) or 504 (timeout).
    """

    status: int
    body: bytes
    request_id: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one try went, for callers that run their own retries and flow control.

    `answered` is False when no HTTP answer came (connection refused or reset, timeout); `status`
    and `body` then describe that as a 502/504 result. `retry_after` is the delay the upstream asked
    for (seconds), `should_retry` its `x-should-retry` verdict when it gave one.
    """

    status: int
    body: bytes
    request_id: str
    answered: bool = True
    retry_after: float | None = None
    should_retry: bool | None = None
    usage: Usage | None = None  # what the body reports, when the backend already read it


class Backend(Protocol):
    name: str
    max_concurrency: int

    def serves(self, model: str) -> bool:
        """Whether this backend takes requests for `model` (matched against its patterns)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        """POST once, with no retries and no concurrency bound of its own."""
        ...

    async def send(self, endpoint: str, body: bytes) -> UpstreamResponse:
        """POST `body` (raw JSON) to `endpoint` (e.g. `/v1/chat/completions`) under the backend's
        concurrency limit, retrying transient failures; returns the final response."""
        ...
