"""The webhook sender: every process that runs the engine delivers the events the store's outbox holds.

About once a second (and at once when this process records an event, or when a retry it scheduled falls
due) it leases due deliveries from the store, and sends each on its own task, a few at a time, with a
short timeout: the engine never waits for it. Each attempt re-sends the event's exact bytes (its id and
`created_at` never change), signed afresh with the attempt's own timestamp. A 2xx ends the delivery;
anything else is tried again with backoff (webhooks/backoff.py) until `webhook_retry_for_s` after the
event, then given up. A sender that dies mid-attempt leaves a lease that runs out, and another worker
(or this one, restarted) sends the delivery again: at least once, and once per event id while nobody dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp

from overnight import __version__
from overnight.domain.clock import Clock
from overnight.domain.events import Delivery, Subscriptions, event_body
from overnight.engine.metrics import Counter, gauge_lines
from overnight.engine.waiting import wait_event
from overnight.probes import NO_PROBE, Probe
from overnight.store.base import MetadataStore
from overnight.webhooks.backoff import RetrySchedule
from overnight.webhooks.signing import secret_key, signed_headers

log = logging.getLogger("overnight.webhooks")
USER_AGENT = f"Overnight-Webhooks/{__version__}"
LEASE_MARGIN_S = 10  # a delivery's lease outlasts its attempt's timeout by this much
SHUTDOWN_GRACE_S = 5.0  # on stop, for attempts in flight to get their answer
ANSWER_READ_LIMIT = 64 * 1024  # of a receiver's answer, read only this much


@dataclass(frozen=True)
class DeliverySettings:
    """How webhooks are sent (wiring.build_webhooks makes it from the settings)."""

    timeout_s: float = 10.0  # one attempt, connecting included
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    poll_interval_s: float = 1.0
    max_in_flight: int = 16  # attempts at once, of every endpoint


class WebhookMetrics:
    """What /metrics shows of webhooks: attempts by endpoint and outcome, and deliveries still pending."""

    def __init__(self) -> None:
        self.attempts = Counter(
            "overnight_webhook_attempts_total",
            "Webhook delivery attempts, by endpoint and outcome (delivered, retry, gave_up).",
        )
        self.pending = 0

    def attempted(self, endpoint: str, outcome: str) -> None:
        self.attempts.inc((("endpoint", endpoint), ("outcome", outcome)))

    def render(self) -> Iterable[str]:
        yield from self.attempts.render()
        yield from gauge_lines(
            "overnight_webhook_pending",
            "Webhook deliveries, of every endpoint, neither delivered nor given up yet.",
            [((), self.pending)],
        )


def describe_failure(exc: BaseException, timeout_s: float) -> str:
    """An attempt that got no answer, in words (never the URL, which may hold a token)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the receiver closed the connection"
    return type(exc).__name__


class WebhookDispatcher:
    def __init__(
        self,
        store: MetadataStore,
        subscriptions: Subscriptions,
        secrets: Mapping[str, str],
        clock: Clock,
        worker_id: str,
        settings: DeliverySettings | None = None,
        *,
        probe: Probe = NO_PROBE,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._subscriptions = subscriptions
        self._keys = {name: secret_key(secrets[name]) for name in subscriptions.names}
        self._clock = clock
        self.worker_id = worker_id
        self._settings = settings or DeliverySettings()
        self._lease_s = math.ceil(self._settings.timeout_s) + LEASE_MARGIN_S
        self._probe = probe
        self._draw = draw
        self._wake = asyncio.Event()
        self._sending: set[asyncio.Task[None]] = set()
        self._next_retry: float | None = None  # the earliest retry this process scheduled
        self.metrics = WebhookMetrics()

    def wake(self) -> None:
        """Look for due deliveries now (an event was just recorded)."""
        self._wake.set()

    def open_session(self) -> aiohttp.ClientSession:
        """The HTTP client of the attempts: its own connections, each attempt's timeout, our headers."""
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json"}
        return aiohttp.ClientSession(timeout=timeout, headers=headers)

    async def run(self) -> None:
        """Deliver until cancelled; then give attempts in flight a moment to get their answer."""
        async with self.open_session() as session:
            try:
                while True:
                    self._wake.clear()
                    try:
                        await self.poll(session)
                    except Exception as exc:  # the store went away: the next poll tries again
                        log.warning("webhooks: cannot reach the store (%s); retrying", type(exc).__name__)
                    await wait_event(self._wake, self._wait_s())
            finally:
                await self._stop_sending()

    async def poll(self, session: aiohttp.ClientSession) -> int:
        """Lease the due deliveries there is room for and start sending each; how many."""
        now = self._clock.now()
        if self._next_retry is not None and self._next_retry <= now:
            self._next_retry = None
        room = self._settings.max_in_flight - len(self._sending)
        due = await self._store.claim_deliveries(
            self.worker_id, int(now), self._lease_s, room, self._subscriptions.names
        )
        for delivery in due:
            self._probe.reached("webhook.claimed")
            task = asyncio.create_task(self._attempt(session, delivery), name=f"webhook {delivery.event_id}")
            self._sending.add(task)
            task.add_done_callback(self._sent)
        self.metrics.pending = await self._store.pending_deliveries()
        return len(due)

    async def idle(self) -> None:
        """Wait until no attempt is in flight here (for tests)."""
        while self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def _wait_s(self) -> float:
        wait = self._settings.poll_interval_s
        if self._next_retry is not None:
            wait = min(wait, max(self._next_retry - self._clock.now(), 0.0))
        return wait

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._wake.set()  # room for one more
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt failed", exc_info=task.exception())

    async def _stop_sending(self) -> None:
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=SHUTDOWN_GRACE_S)
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _attempt(self, session: aiohttp.ClientSession, delivery: Delivery) -> None:
        subscription = self._subscriptions.get(delivery.endpoint)
        assert subscription is not None  # only this process's endpoints are claimed
        body = event_body(delivery.event_id, delivery.type, delivery.created_at, delivery.batch_id)
        key = self._keys[delivery.endpoint]
        headers = signed_headers(key, delivery.event_id, int(self._clock.now()), body)
        status: int | None = None
        error = ""
        post = session.post(subscription.url, data=body, headers=headers, allow_redirects=False)
        try:
            async with post as answer:
                status = answer.status
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await answer.content.read(ANSWER_READ_LIMIT)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = describe_failure(exc, self._settings.timeout_s)
        try:
            if status is not None and 200 <= status < 300:
                await self._delivered(delivery, status)
            else:
                await self._failed(delivery, status, error or f"HTTP {status}")
        except (ConnectionError, OSError) as exc:
            log.warning(
                "webhook %s: the store did not take the outcome (%s); sent again once its lease runs out",
                _described(delivery),
                type(exc).__name__,
            )

    async def _delivered(self, delivery: Delivery, status: int) -> None:
        await self._store.finish_delivery(delivery, int(self._clock.now()), status)
        self.metrics.attempted(delivery.endpoint, "delivered")
        log.info("webhook delivered %s: HTTP %d", _described(delivery), status)

    async def _failed(self, delivery: Delivery, status: int | None, error: str) -> None:
        now = self._clock.now()
        retry_at = self._settings.schedule.next_attempt_at(
            delivery.attempts, delivery.created_at, now, self._draw
        )
        held = await self._store.retry_delivery(
            delivery, self.worker_id, int(now), retry_at=retry_at, status=status, error=error
        )
        if retry_at is None:
            self.metrics.attempted(delivery.endpoint, "gave_up")
            log.error(
                "webhook given up %s: %s; no 2xx in the %d s after the event (webhook_retry_for_s)",
                _described(delivery),
                error,
                self._settings.schedule.retry_for_s,
            )
            return
        self.metrics.attempted(delivery.endpoint, "retry")
        if held and (self._next_retry is None or retry_at < self._next_retry):
            self._next_retry = retry_at
        log.warning(
            "webhook attempt failed %s: %s; next attempt in %d s", _described(delivery), error, retry_at - now
        )


def _described(delivery: Delivery) -> str:
    return (
        f"event={delivery.event_id} type={delivery.type} batch={delivery.batch_id}"
        f" endpoint={delivery.endpoint} attempt={delivery.attempts}"
    )
