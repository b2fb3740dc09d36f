"""The webhook sender with real parts: a SQLite store, aiohttp on loopback to a real receiver, and a
clock the test moves, so retries, timeouts and giving up are checked without waiting for them."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overnight.domain.clock import ManualClock
from overnight.domain.events import ALL_EVENT_TYPES, Subscription, Subscriptions
from overnight.domain.lifecycle import transition
from overnight.domain.models import Batch, BatchStatus
from overnight.store.sqlite import SqliteStore
from overnight.webhooks.backoff import RetrySchedule
from overnight.webhooks.dispatcher import DeliverySettings, WebhookDispatcher
from support.server import free_port
from support.webhook_receiver import WebhookReceiver

S = BatchStatus
SECRET = "whsec_" + base64.b64encode(b"integration-secret-for-webhooks!").decode()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "overnight.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    server = WebhookReceiver(refuse_first={"/flaky": 2}, hang_first={"/slow": 1}, hang_s=2.0)
    await server.start()
    yield server
    await server.stop()


def subscriptions(**urls: str) -> Subscriptions:
    return Subscriptions(
        Subscription(name, url, frozenset(ALL_EVENT_TYPES), None) for name, url in urls.items()
    )


def dispatcher(store: SqliteStore, subs: Subscriptions, clock: ManualClock) -> WebhookDispatcher:
    settings = DeliverySettings(timeout_s=0.5, schedule=RetrySchedule(base_s=10.0, retry_for_s=600))
    return WebhookDispatcher(
        store, subs, dict.fromkeys(subs.names, SECRET), clock, "w1", settings, draw=lambda: 1.0
    )


async def ended_batch(
    store: SqliteStore, subs: Subscriptions, clock: ManualClock, status: BatchStatus
) -> str:
    now = int(clock.now())
    before = {S.COMPLETED: S.FINALIZING, S.CANCELLED: S.CANCELLING}.get(status, S.VALIDATING)
    batch = Batch("batch_1", "team-a", "/v1/chat/completions", "file-1", "24h", before, now, now + 86400)
    await store.add_batch(batch)
    ended = transition(batch, status, now)
    event = subs.event_for(ended, "evt_1", now)
    assert event is not None
    assert await store.transition_batch(ended, expected=(before,), event=event)
    return event.id


async def attempt(sender: WebhookDispatcher) -> int:
    """One poll of the sender, and the end of every attempt it started."""
    async with sender.open_session() as session:
        claimed = await sender.poll(session)
        await sender.idle()
    return claimed


def metric(sender: WebhookDispatcher, endpoint: str, outcome: str) -> float:
    return sender.metrics.attempts.values.get((("endpoint", endpoint), ("outcome", outcome)), 0)


async def test_a_refused_delivery_is_retried_with_backoff_until_it_is_taken(
    store: SqliteStore, receiver: WebhookReceiver
) -> None:
    clock = ManualClock(float(int(time.time())))
    subs = subscriptions(flaky=receiver.url("/flaky"))
    sender = dispatcher(store, subs, clock)
    await ended_batch(store, subs, clock, S.FAILED)
    assert await attempt(sender) == 1  # refused: next in 10 s
    assert await attempt(sender) == 0
    clock.advance(9)
    assert await attempt(sender) == 0
    clock.advance(1)
    assert await attempt(sender) == 1  # refused: next in 20 s
    clock.advance(20)
    assert await attempt(sender) == 1  # taken
    assert [r.answered for r in receiver.received] == [503, 503, 200]
    assert (metric(sender, "flaky", "retry"), metric(sender, "flaky", "delivered")) == (2, 1)
    clock.advance(10_000)
    assert await attempt(sender) == 0
    assert sender.metrics.pending == 0
    bodies = {r.body for r in receiver.received}
    assert len(bodies) == 1  # the same bytes every time
    assert {r.event_id for r in receiver.received} == {"evt_1"}
    assert len({r.headers["webhook-timestamp"] for r in receiver.received}) == 3  # each signed anew
    assert {r.headers["content-type"] for r in receiver.received} == {"application/json"}
    assert receiver.received[0].headers["user-agent"].startswith("Overnight-Webhooks/")
    for received in receiver.received:
        event = received.unwrap(SECRET)  # the official SDK's client.webhooks.unwrap
        assert (event.type, event.data.id) == ("batch.failed", "batch_1")
    rendered = "\n".join(sender.metrics.render())
    assert 'overnight_webhook_attempts_total{endpoint="flaky",outcome="retry"} 2' in rendered
    assert "overnight_webhook_pending 0" in rendered


async def test_no_answer_in_time_and_a_refused_connection_are_failures_too(
    store: SqliteStore,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(float(int(time.time())))
    closed = f"http://127.0.0.1:{free_port()}/nobody"
    subs = subscriptions(slow=receiver.url("/slow"), closed=closed)
    sender = dispatcher(store, subs, clock)
    await ended_batch(store, subs, clock, S.CANCELLED)
    assert await attempt(sender) == 2
    assert (metric(sender, "slow", "retry"), metric(sender, "closed", "retry")) == (1, 1)
    assert "endpoint=slow attempt=1: no answer within 0.5 s; next attempt in" in caplog.text
    assert "endpoint=closed attempt=1: cannot connect" in caplog.text
    clock.advance(10)
    assert await attempt(sender) == 2
    assert metric(sender, "slow", "delivered") == 1
    assert await attempt(sender) == 0
    assert sender.metrics.pending == 1  # the closed one's (the gauge is read at each poll)
    assert SECRET.removeprefix("whsec_") not in caplog.text


async def test_a_delivery_is_given_up_after_retry_for_s(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(float(int(time.time())))
    subs = subscriptions(closed=f"http://127.0.0.1:{free_port()}/nobody")
    sender = dispatcher(store, subs, clock)
    await ended_batch(store, subs, clock, S.EXPIRED)
    attempts = 0
    for _ in range(20):
        attempts += await attempt(sender)
        clock.advance(3600)
        if metric(sender, "closed", "gave_up"):
            break
    assert metric(sender, "closed", "gave_up") == 1
    assert attempts == metric(sender, "closed", "retry") + 1
    assert await store.pending_deliveries() == 0
    assert "webhook given up event=evt_1 type=batch.expired" in caplog.text
    clock.advance(100_000)
    assert await attempt(sender) == 0


async def test_a_sender_claims_only_its_own_endpoints(store: SqliteStore) -> None:
    clock = ManualClock(float(int(time.time())))
    both = subscriptions(a="http://127.0.0.1:9/a", b="http://127.0.0.1:9/b")
    await ended_batch(store, both, clock, S.COMPLETED)
    only_a = subscriptions(a=f"http://127.0.0.1:{free_port()}/a")  # this process knows only endpoint a
    sender = dispatcher(store, only_a, clock)
    assert await attempt(sender) == 1
    assert sender.metrics.pending == 2  # a's failed attempt waits, b's was never claimed
