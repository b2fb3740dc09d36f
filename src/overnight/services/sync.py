"""Synchronous requests: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/responses` and `/v1/moderations`, answered while the client waits (docs/sync.md).

A request goes to the backend that serves its model (the same routing as batch lines), under that
backend's scheduler: it waits for a ticket (engine/online.py; online before batch work, flex with it),
sends the body as it came (less `service_tier` where the backend does not take it), and hands back the
upstream's answer, whole or as a stream relayed chunk by chunk. Upstream errors come back with their
status and body. Overnight tries again only what engine/retry.py's `retry_synchronous` allows. Usage
is counted per project, day, model and tier (services/sync_usage.py) and in /metrics.

This service drives the engine's schedulers through the narrow `Slots` port, and the values of
engine/online.py; it never sees the web framework.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from overnight.backends.base import Attempt, Backend, StreamAnswer
from overnight.domain.clock import Clock
from overnight.domain.errors import NotFound, ServiceUnavailable, TooManyRequests
from overnight.domain.models import Usage
from overnight.domain.results import usage_of
from overnight.domain.sync import StreamUsage, SyncRequest, Tier, read_request, without_service_tier
from overnight.engine.feed import estimate_tokens
from overnight.engine.online import Lane, NoSlot, Ticket
from overnight.engine.retry import RetryPolicy, retry_synchronous
from overnight.services.sync_metrics import SyncMetrics
from overnight.services.sync_usage import SyncUsageRecorder

log = logging.getLogger("overnight.sync")
Headers = tuple[tuple[str, str], ...]
_INTERNAL_ERROR = (
    b'{"error":{"message":"Overnight could not run this request because of an internal error.",'
    b'"type":"server_error","param":null,"code":null}}'
)


class Slots(Protocol):
    """What this service needs of a backend's scheduler (engine/scheduler.py)."""

    async def admit(self, lane: Lane, tokens: float, deadline: float = ...) -> Ticket: ...

    def answered(self, ticket: Ticket, answer: Attempt, seconds: float) -> None: ...

    def release(self, ticket: Ticket, usage: Usage | None = None) -> None: ...


@dataclass(frozen=True)
class SyncSettings:
    flex_timeout_s: float = 300.0  # a flex request's longest wait for a slot
    tier_forwarded: frozenset[str] = frozenset()  # backends that get `service_tier` as sent
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True, slots=True)
class WholeAnswer:
    status: int
    body: bytes  # a JSON object
    headers: Headers = ()


@dataclass(frozen=True, slots=True, eq=False)
class StreamedAnswer:
    """A 2xx event stream: iterate `chunks`, and always `aclose` them, read or not (that frees the
    backend's slot and counts the request)."""

    status: int
    content_type: str
    chunks: Relay
    headers: Headers = ()


SyncAnswer = WholeAnswer | StreamedAnswer


@dataclass(slots=True)
class _Call:
    """One request on its way: where it runs, and what is known of it so far."""

    project: str
    request: SyncRequest
    backend: Backend
    slots: Slots
    arrived: float
    attempts: int = 0


class SyncService:
    def __init__(
        self,
        route: Callable[[str], Backend | None],
        slots_for: Callable[[Backend], Slots],
        clock: Clock,
        usage: SyncUsageRecorder,
        settings: SyncSettings | None = None,
        *,
        metrics: SyncMetrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._route = route
        self._slots_for = slots_for
        self._clock = clock
        self.usage = usage
        self._settings = settings or SyncSettings()
        self.metrics = metrics or SyncMetrics()
        self._rand = rand

    def read(self, endpoint: str, body: bytes) -> SyncRequest:
        """What the body asks for; InvalidRequest when it cannot be a request."""
        return read_request(endpoint, body)

    async def run(self, project: str, request: SyncRequest, body: bytes) -> SyncAnswer:
        """Run one request on the backend of its model (`background` is the caller's business)."""
        backend = self._route(request.model)
        if backend is None:
            raise NotFound(
                f"The model `{request.model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if request.has_service_tier and backend.name not in self._settings.tier_forwarded:
            body = without_service_tier(body)
        call = _Call(project, request, backend, self._slots_for(backend), self._clock.now())
        lane = Lane.FLEX if request.tier is Tier.FLEX else Lane.ONLINE
        deadline = call.arrived + self._settings.flex_timeout_s if lane is Lane.FLEX else math.inf
        tokens = estimate_tokens(body)
        while True:
            call.attempts += 1
            ticket = await self._admit(call, lane, tokens, deadline)
            outcome = await self._send(call, ticket, body)
            if isinstance(outcome, StreamAnswer):
                return self._relay(call, ticket, outcome)
            usage = (outcome.usage or usage_of(outcome.body)) if 200 <= outcome.status < 300 else None
            call.slots.release(ticket, usage)
            if not retry_synchronous(outcome, call.attempts, answer_sent=False):
                self._finished(call, outcome.status, usage)
                return WholeAnswer(outcome.status, outcome.body, _passed_on(outcome))
            await asyncio.sleep(self._settings.retry.delay(call.attempts, None, self._rand))

    async def _admit(self, call: _Call, lane: Lane, tokens: float, deadline: float) -> Ticket:
        asked = self._clock.now()
        backend, tier = call.backend.name, str(call.request.tier)
        self.metrics.wait_began(backend, tier)
        try:
            ticket = await call.slots.admit(lane, tokens, deadline)
        except NoSlot as exc:
            self._finished(call, 429 if lane is Lane.FLEX else 503, None)
            raise self._no_slot(call, exc) from None
        finally:
            self.metrics.waited(backend, tier, self._clock.now() - asked)
        return ticket

    def _no_slot(self, call: _Call, exc: NoSlot) -> TooManyRequests | ServiceUnavailable:
        if call.request.tier is Tier.FLEX:
            return TooManyRequests(
                f"Resource unavailable: no capacity for '{call.request.model}' with service_tier 'flex' came "
                f"within {self._settings.flex_timeout_s:g} s (its backend is busy with other work). You are "
                "not charged for this request. Try again later, or without service_tier 'flex'.",
                code="resource_unavailable",
                headers=(("x-should-retry", "true"),),
            )
        headers: Headers = (("x-should-retry", "true"),)
        if exc.retry_in is not None:
            headers += (("retry-after", str(max(1, math.ceil(exc.retry_in)))),)
        return ServiceUnavailable(
            f"The backend serving '{call.request.model}' is not answering ({exc.reason}); Overnight sends "
            "it nothing for a moment. Try again shortly.",
            code="backend_unavailable",
            headers=headers,
        )

    async def _send(self, call: _Call, ticket: Ticket, body: bytes) -> Attempt | StreamAnswer:
        """One attempt under the ticket; its head is accounted for, the ticket still held."""
        backend, endpoint = call.backend, call.request.endpoint
        started = self._clock.now()
        try:
            if call.request.stream:
                outcome = await backend.stream(endpoint, body)
            else:
                outcome = await backend.attempt(endpoint, body)
        except asyncio.CancelledError:
            call.slots.release(ticket)
            raise
        except Exception:
            log.exception("internal error sending a synchronous request to backend %s", backend.name)
            outcome = Attempt(500, _INTERNAL_ERROR, "", should_retry=False)
        head = outcome if isinstance(outcome, Attempt) else Attempt(outcome.status, b"{}", outcome.request_id)
        call.slots.answered(ticket, head, self._clock.now() - started)
        return outcome

    def _relay(self, call: _Call, ticket: Ticket, stream: StreamAnswer) -> StreamedAnswer:
        headers: Headers = (("x-upstream-request-id", stream.request_id),)
        relay = Relay(
            call,
            ticket,
            stream,
            self._clock,
            self.metrics,
            lambda usage: self._finished(call, stream.status, usage),
        )
        return StreamedAnswer(stream.status, stream.content_type, relay, headers)

    def _finished(self, call: _Call, status: int, usage: Usage | None) -> None:
        """Count an answered request: metrics always, usage (for the costs) when it succeeded."""
        request = call.request
        seconds = self._clock.now() - call.arrived
        self.metrics.answered(call.backend.name, request.endpoint, str(request.tier), status, seconds, usage)
        if 200 <= status < 300:
            self.usage.add(call.project, request.model, request.tier, usage or Usage())


def _passed_on(answer: Attempt) -> Headers:
    """The upstream's retry advice (and request id), passed on with its answer."""
    headers: Headers = ()
    if answer.request_id:
        headers += (("x-upstream-request-id", answer.request_id),)
    if answer.should_retry is not None:
        headers += (("x-should-retry", "true" if answer.should_retry else "false"),)
    if answer.retry_after is not None:
        headers += (
            ("retry-after-ms", str(round(answer.retry_after * 1000))),
            ("retry-after", str(math.ceil(answer.retry_after))),
        )
    return headers


def _error_event(message: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None, "code": "stream_interrupted"}
    return b"data: " + msgspec.json.encode({"error": error}) + b"\n\n"


class Relay:
    """The upstream's chunks as they come (an async iterator of bytes). A stream cut off ends with an
    error event, which the SDK raises. `aclose`, however the stream ended or whether it was read at
    all (the client may go away), closes the upstream's stream, frees the slot and counts the usage
    the stream reported (or, from a backend that counts it, `StreamAnswer.usage`)."""

    def __init__(
        self,
        call: _Call,
        ticket: Ticket,
        stream: StreamAnswer,
        clock: Clock,
        metrics: SyncMetrics,
        finished: Callable[[Usage], None],
    ) -> None:
        self._call = call
        self._ticket = ticket
        self._stream = stream
        self._clock = clock
        self._metrics = metrics
        self._finished = finished
        self._usage = StreamUsage()
        self._started = False
        self._ended = False
        self._closed = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await anext(self._stream.chunks)
        except StopAsyncIteration:
            self._ended = True
            raise
        except (ConnectionError, TimeoutError) as exc:
            self._ended = True
            log.warning("a stream from backend %s broke off: %s", self._call.backend.name, exc)
            return _error_event(f"The upstream's stream broke off before its end: {exc}")
        if not self._started:
            self._started = True
            call = self._call
            waited = self._clock.now() - call.arrived
            self._metrics.first_chunk(
                call.backend.name, call.request.endpoint, str(call.request.tier), waited
            )
        self._usage.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.close()
        finally:
            counted = self._stream.usage
            usage = counted() if counted is not None else self._usage.usage
            self._call.slots.release(self._ticket, usage)
            self._finished(usage or Usage())
