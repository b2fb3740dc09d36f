"""Webhook events and signatures: the events a batch makes, their exact body, and signatures that the
official SDKs (Python and Node) and the Standard Webhooks library accept, or reject when they should."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai import OpenAI
from standardwebhooks import Webhook, WebhookVerificationError

from overnight.domain.clock import ManualClock
from overnight.domain.events import ALL_EVENT_TYPES, Event, Subscription, Subscriptions, event_body
from overnight.domain.ids import IdGenerator
from overnight.domain.models import Batch, BatchStatus
from overnight.webhooks.backoff import RETRY_CAP_S, RetrySchedule
from overnight.webhooks.signing import secret_key, signed_headers
from support import node_openai
from support.webhook_receiver import BatchEvent

S = BatchStatus
SECRET = "whsec_" + base64.b64encode(b"overnight-test-secret-0123456789").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-secret-entirely-98765432").decode()


def batch(status: BatchStatus, project: str = "team-a") -> Batch:
    return Batch(
        id="batch_0194aa",
        project=project,
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status=status,
        created_at=1_700_000_000,
        expires_at=1_700_086_400,
    )


def everything(name: str = "all", project: str | None = None) -> Subscription:
    return Subscription(name, "http://127.0.0.1:9/hook", frozenset(ALL_EVENT_TYPES), project)


# -- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (S.COMPLETED, "batch.completed"),
        (S.FAILED, "batch.failed"),
        (S.CANCELLED, "batch.cancelled"),
        (S.EXPIRED, "batch.expired"),
    ],
)
def test_each_terminal_status_makes_its_event(status: BatchStatus, expected: str) -> None:
    event = Subscriptions([everything()]).event_for(batch(status), "evt_1", 1_700_000_500)
    assert event == Event("evt_1", expected, 1_700_000_500, "batch_0194aa", "team-a", ("all",))


@pytest.mark.parametrize("status", [S.VALIDATING, S.IN_PROGRESS, S.FINALIZING, S.CANCELLING])
def test_a_batch_that_has_not_ended_makes_no_event(status: BatchStatus) -> None:
    assert Subscriptions([everything()]).event_for(batch(status), "evt_1", 0) is None


def test_an_event_goes_only_to_the_endpoints_that_want_its_type_and_project() -> None:
    subscriptions = Subscriptions(
        [
            everything("every-project"),
            everything("team-a-only", project="team-a"),
            everything("team-b-only", project="team-b"),
            Subscription("failures", "http://127.0.0.1:9/f", frozenset({"batch.failed"}), None),
        ]
    )
    completed = subscriptions.event_for(batch(S.COMPLETED), "evt_1", 0)
    assert completed is not None
    assert completed.endpoints == ("every-project", "team-a-only")
    failed = subscriptions.event_for(batch(S.FAILED, project="team-b"), "evt_2", 0)
    assert failed is not None
    assert failed.endpoints == ("every-project", "team-b-only", "failures")
    only_failures = Subscriptions([Subscription("f", "http://x/", frozenset({"batch.failed"}), None)])
    assert only_failures.event_for(batch(S.COMPLETED), "evt_3", 0) is None
    assert Subscriptions().event_for(batch(S.COMPLETED), "evt_4", 0) is None


def test_the_body_is_openais_event_exactly() -> None:
    body = event_body("evt_abc", "batch.completed", 1_719_168_000, "batch_xyz")
    assert body == (
        b'{"id":"evt_abc","object":"event","type":"batch.completed","created_at":1719168000,'
        b'"data":{"id":"batch_xyz"}}'
    )


def test_event_ids_look_like_openais_and_sort_by_creation() -> None:
    clock = ManualClock()
    ids = IdGenerator(clock)
    first = ids.event_id()
    clock.advance(0.001)
    second = ids.event_id()
    assert first.startswith("evt_")
    assert first < second


# -- signatures --------------------------------------------------------------------------------


def delivery(
    secret: str = SECRET, timestamp: int | None = None, type: str = "batch.completed"
) -> tuple[bytes, dict[str, str]]:
    body = event_body("evt_0194aa", type, 1_700_000_000, "batch_0194aa")
    stamp = int(time.time()) if timestamp is None else timestamp
    return body, signed_headers(secret_key(secret), "evt_0194aa", stamp, body)


def test_the_python_sdk_accepts_every_event_type() -> None:
    client = OpenAI(api_key="unused", webhook_secret=SECRET)
    for event_type in sorted(ALL_EVENT_TYPES):
        body, headers = delivery(type=event_type)
        event = client.webhooks.unwrap(body, headers)
        assert isinstance(event, BatchEvent)  # OpenAI's own type for this event
        assert (event.id, event.type, event.created_at) == ("evt_0194aa", event_type, 1_700_000_000)
        assert event.data.id == "batch_0194aa"
        assert event.object == "event"
        assert client.webhooks.unwrap(body.decode(), headers, secret=SECRET).id == "evt_0194aa"


def test_the_python_sdk_rejects_a_tampered_body_a_stale_timestamp_and_a_wrong_secret() -> None:
    client = OpenAI(api_key="unused")
    body, headers = delivery()
    tampered = body.replace(b"batch_0194aa", b"batch_0194ab")
    stale_body, stale = delivery(timestamp=int(time.time()) - 400)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(tampered, headers, secret=SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(stale_body, stale, secret=SECRET)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, headers, secret=OTHER_SECRET)
    moved = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)}
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body, moved, secret=SECRET)


def test_standard_webhooks_agrees() -> None:
    body, headers = delivery()
    assert Webhook(SECRET).verify(body, headers)["id"] == "evt_0194aa"
    stamp = datetime.fromtimestamp(int(headers["webhook-timestamp"]), tz=UTC)
    assert Webhook(SECRET).sign("evt_0194aa", stamp, body.decode()) == headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(body, headers)


def test_the_node_sdk_accepts_every_delivery_and_rejects_the_rest() -> None:
    def case(body: bytes, headers: dict[str, str], secret: str = SECRET) -> dict[str, Any]:
        return {"body": body.decode(), "headers": headers, "secret": secret}

    accepted = [case(*delivery(type=event_type)) for event_type in sorted(ALL_EVENT_TYPES)]
    body, headers = delivery()
    rejected = [
        case(body.replace(b"0194aa", b"0194ab"), headers),
        case(*delivery(timestamp=int(time.time()) - 400)),
        case(body, headers, OTHER_SECRET),
    ]
    verdicts = node_openai.unwrap_all(accepted + rejected)
    good, bad = verdicts[: len(accepted)], verdicts[len(accepted) :]
    assert all(verdict["ok"] for verdict in good), good
    assert [verdict["event"] for verdict in good] == [json.loads(c["body"]) for c in accepted]
    assert not any(verdict["ok"] for verdict in bad), bad


@pytest.mark.parametrize("secret", ["", "whsec_", "sk-not-a-webhook-secret", "whsec_***not base64***"])
def test_a_secret_that_is_not_whsec_base64_is_refused_without_showing_it(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_") as raised:
        secret_key(secret)
    if secret.removeprefix("whsec_"):
        assert secret.removeprefix("whsec_") not in str(raised.value)


# -- retries -----------------------------------------------------------------------------------


def test_the_waits_double_from_the_base_up_to_the_cap() -> None:
    schedule = RetrySchedule(base_s=5.0)
    assert [schedule.delay(n, draw=lambda: 1.0) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert schedule.delay(1, draw=lambda: 0.0) == 2.5
    assert schedule.delay(40, draw=lambda: 1.0) == RETRY_CAP_S
    assert schedule.delay(10_000, draw=lambda: 0.5) <= RETRY_CAP_S


@given(
    attempts=st.integers(1, 200),
    base=st.floats(0.01, 600.0),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_a_wait_is_between_half_and_all_of_its_backoff(attempts: int, base: float, draw: float) -> None:
    schedule = RetrySchedule(base_s=base)
    full = min(RETRY_CAP_S, base * 2.0 ** (attempts - 1))
    assert full / 2 - 1e-9 <= schedule.delay(attempts, draw=lambda: draw) <= full + 1e-9


def test_retries_go_on_for_at_least_retry_for_s_after_the_event_then_stop() -> None:
    schedule = RetrySchedule(base_s=5.0, retry_for_s=86400)
    created = 1_700_000_000
    assert schedule.next_attempt_at(1, created, created + 0.2, draw=lambda: 1.0) == created + 6
    late = created + 86399.5  # still inside the window: one more attempt, even past it
    assert schedule.next_attempt_at(30, created, late, draw=lambda: 1.0) == created + 86400 + 3600
    assert schedule.next_attempt_at(31, created, created + 86400, draw=lambda: 1.0) is None


def test_a_whole_day_of_failures_takes_dozens_of_attempts_not_thousands() -> None:
    """Every wait at most an hour: a receiver that comes back is heard from within the hour."""
    schedule = RetrySchedule(base_s=5.0, retry_for_s=86400)
    created, now, attempts = 1_700_000_000, 1_700_000_000.0, 1
    while (retry_at := schedule.next_attempt_at(attempts, created, now, draw=lambda: 0.5)) is not None:
        assert retry_at - now <= RETRY_CAP_S + 1
        now, attempts = float(retry_at), attempts + 1
    assert now >= created + 86400
    assert 30 < attempts < 60


def test_subscriptions_are_plain_values() -> None:
    subscription = everything()
    assert dataclasses.replace(subscription, project="x").wants("batch.completed", "x")
    assert not dataclasses.replace(subscription, project="x").wants("batch.completed", "y")
