"""What Overnight reads of a synchronous request (domain/sync.py), the usage a stream reports however it
is cut into chunks, the retry rule for synchronous requests, and the usage recorder over real SQLite."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.backends.base import Attempt
from overnight.domain.clock import ManualClock
from overnight.domain.errors import InvalidRequest
from overnight.domain.models import Usage
from overnight.domain.sync import (
    CHAT,
    EMBEDDINGS,
    MODERATIONS,
    RESPONSES,
    StreamUsage,
    Tier,
    read_request,
    without_service_tier,
)
from overnight.engine.retry import SYNC_MAX_ATTEMPTS, retry_synchronous
from overnight.services.sync_usage import DAY_S, SyncUsageRecorder
from overnight.store.sqlite import SqliteStore


def body(**fields: object) -> bytes:
    return json.dumps({"model": "m", "messages": [], **fields}).encode()


def test_a_plain_request() -> None:
    request = read_request(CHAT, body())
    assert (request.model, request.stream, request.tier, request.background) == (
        "m",
        False,
        Tier.DEFAULT,
        False,
    )
    assert not request.has_service_tier


def test_stream_flex_and_background() -> None:
    request = read_request(RESPONSES, body(stream=True, service_tier="flex", background=True))
    assert (request.stream, request.tier, request.background, request.has_service_tier) == (
        True,
        Tier.FLEX,
        True,
        True,
    )
    assert read_request(CHAT, body(background=True)).background is False  # only /v1/responses has it
    assert read_request(CHAT, body(service_tier="priority")).tier is Tier.DEFAULT


def test_a_moderation_without_a_model_gets_openais_default() -> None:
    assert read_request(MODERATIONS, b'{"input": "hi"}').model == "omni-moderation-latest"


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_request_body", None),
        (b'{"input": "x"}', "missing_required_parameter", "model"),
        (b'{"model": 5}', "invalid_type", "model"),
        (b'{"model": ""}', "invalid_type", "model"),
        (b'{"model": "m", "stream": "yes"}', "invalid_type", "stream"),
        (b'{"model": "m", "service_tier": "cheap"}', "invalid_value", "service_tier"),
    ],
)
def test_bad_bodies_are_openai_400s(raw: bytes, code: str, param: str | None) -> None:
    with pytest.raises(InvalidRequest) as refused:
        read_request(EMBEDDINGS, raw)
    assert (refused.value.code, refused.value.param, refused.value.status) == (code, param, 400)


@given(st.binary(max_size=200))
def test_any_bytes_get_a_verdict(raw: bytes) -> None:
    with contextlib.suppress(InvalidRequest):
        read_request(CHAT, raw)


def test_without_service_tier_keeps_the_rest() -> None:
    stripped = json.loads(without_service_tier(body(service_tier="flex", temperature=0.5)))
    assert stripped == {"model": "m", "messages": [], "temperature": 0.5}


def sse(*payloads: object) -> bytes:
    return (
        b"".join(b"data: " + json.dumps(payload).encode() + b"\n\n" for payload in payloads)
        + b"data: [DONE]\n\n"
    )


CHAT_STREAM = sse(
    {"choices": [{"delta": {"content": "hi"}}], "usage": None},
    {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}},
)
RESPONSES_STREAM = sse(
    {"type": "response.output_text.delta", "delta": "hi"},
    {
        "type": "response.completed",
        "response": {"id": "r", "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}},
    },
)


@given(st.lists(st.integers(min_value=0, max_value=len(CHAT_STREAM)), max_size=12))
def test_the_usage_chunk_is_found_however_the_stream_is_cut(cuts: list[int]) -> None:
    scanner = StreamUsage()
    points = [0, *sorted(cuts), len(CHAT_STREAM)]
    for start, end in itertools.pairwise(points):
        scanner.feed(CHAT_STREAM[start:end])
    assert scanner.usage == Usage(input_tokens=7, output_tokens=3)


def test_a_responses_stream_reports_its_completed_usage() -> None:
    scanner = StreamUsage()
    scanner.feed(RESPONSES_STREAM)
    assert scanner.usage == Usage(input_tokens=5, output_tokens=2)


def test_a_stream_without_usage_reports_none() -> None:
    scanner = StreamUsage()
    scanner.feed(sse({"choices": [{"delta": {"content": "a 'usage' word"}}]}))
    scanner.feed(b"data: {broken\n\n")
    assert scanner.usage is None


def unreached() -> Attempt:
    return Attempt(502, b"{}", "r", answered=False, reached=False)


def test_only_unreached_attempts_are_retried_and_never_once_sent() -> None:
    assert retry_synchronous(unreached(), 1, answer_sent=False)
    assert not retry_synchronous(unreached(), SYNC_MAX_ATTEMPTS, answer_sent=False)
    assert not retry_synchronous(unreached(), 1, answer_sent=True)
    for answer in (
        Attempt(429, b"{}", "r"),
        Attempt(503, b"{}", "r"),
        Attempt(504, b"{}", "r", answered=False),  # it may have run upstream
        Attempt(200, b"{}", "r"),
    ):
        assert not retry_synchronous(answer, 1, answer_sent=False)


async def test_the_recorder_adds_up_in_memory_and_writes_in_one_group(tmp_path: Path) -> None:
    clock = ManualClock(start=1_700_006_400.0 + 10)  # a day's first second, plus 10 s
    store = SqliteStore(tmp_path / "db.sqlite3", clock=clock)
    await store.open()
    try:
        recorder = SyncUsageRecorder(store, clock, interval_s=3600)
        recorder.add("p", "m", Tier.DEFAULT, Usage(10, 5))
        recorder.add("p", "m", Tier.DEFAULT, Usage(1, 1))
        recorder.add("p", "m", Tier.FLEX, Usage(2, 2))
        clock.advance(DAY_S)
        recorder.add("p", "m", Tier.DEFAULT, Usage(4, 4))
        assert recorder.pending == 3
        assert await store.sync_usage_by_day(None, 0, 2**62) == []
        await recorder.close()  # writes what it holds
        assert recorder.pending == 0
        found = await store.sync_usage_by_day(None, 0, 2**62)
    finally:
        await store.close()
    assert [(row.day - 1_700_006_400, row.tier, row.requests, row.usage) for row in found] == [
        (0, Tier.DEFAULT, 2, Usage(11, 6)),
        (0, Tier.FLEX, 1, Usage(2, 2)),
        (DAY_S, Tier.DEFAULT, 1, Usage(4, 4)),
    ]


async def test_a_failed_write_is_kept_for_the_next(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SqliteStore(tmp_path / "db.sqlite3", clock=clock)
    recorder = SyncUsageRecorder(store, clock, interval_s=3600)
    recorder.add("p", "m", Tier.DEFAULT, Usage(1, 1))
    with pytest.raises(RuntimeError):  # the store is not open
        await recorder.flush()
    recorder.add("p", "m", Tier.DEFAULT, Usage(1, 1))
    assert recorder.pending == 1
    await store.open()
    try:
        await recorder.flush()
        (row,) = await store.sync_usage_by_day(None, 0, 2**62)
    finally:
        await store.close()
    assert (row.requests, row.usage) == (2, Usage(2, 2))
