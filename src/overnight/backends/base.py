"""The model backend interface. Every implementation passes tests/contract/test_backend_contract.py."""

from __future__ import annotations

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
