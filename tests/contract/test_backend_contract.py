"""Every Backend implementation against one suite, driven by a real fake upstream server.

Each implementation comes as a `Harness`. Expectations are model-independent: a success is a 2xx
with a JSON object body, failures are OpenAI-shaped, and one `attempt` is one request upstream:
retries are the scheduler's (tests/unit/test_scheduler.py). Tests that steer the upstream's
failures with the `fake` directive need a backend that forwards requests to FakeUpstream
(`forwards = True`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.backends.http import HttpBackend, normalize_body
from overnight.domain.results import usage_of
from support.backend_harness import CHAT, Harness, Options, chat, error_of, make_http
from support.fake_upstream import FakeUpstream

# -- every implementation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/v1/chat/completions", {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"model": "fake-chat", "prompt": "hi"}),
        ("/v1/embeddings", {"model": "fake-embed", "input": ["a", "b"]}),
        ("/v1/responses", {"model": "fake-chat", "input": "hi"}),
        ("/v1/moderations", {"model": "omni-moderation-latest", "input": "hi"}),
    ],
)
async def test_success_is_a_2xx_json_object(
    harness: Harness, run_with: Callable[..., Any], endpoint: str, body: dict[str, Any]
) -> None:
    harness.require_endpoint(endpoint)
    async with run_with() as run:
        answer = await run.attempt(body, endpoint)
    assert 200 <= answer.status < 300
    assert answer.answered
    assert answer.reached
    decoded = json.loads(answer.body)
    assert isinstance(decoded, dict)
    assert b"\n" not in answer.body
    assert answer.request_id
    assert answer.retry_after is None


async def test_success_reports_usage(harness: Harness, run_with: Callable[..., Any]) -> None:
    async with run_with() as run:
        answer = await run.attempt({"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]})
    body_usage = json.loads(answer.body)["usage"]
    assert body_usage["total_tokens"] == body_usage["prompt_tokens"] + body_usage["completion_tokens"]
    usage = answer.usage if answer.usage is not None else usage_of(answer.body)  # as the scheduler reads it
    assert (usage.input_tokens, usage.output_tokens) == (
        body_usage["prompt_tokens"],
        body_usage["completion_tokens"],
    )


async def test_many_concurrent_attempts_all_answer(run_with: Callable[..., Any]) -> None:
    async with run_with(max_concurrency=3) as run:
        bodies = [
            {"model": "fake-chat", "messages": [{"role": "user", "content": str(n)}]} for n in range(50)
        ]
        answers = await asyncio.gather(*(run.attempt(body) for body in bodies))
    assert all(answer.status == 200 for answer in answers)


async def test_an_unknown_model_is_an_openai_error(harness: Harness, run_with: Callable[..., Any]) -> None:
    async with run_with() as run:
        answer = await run.attempt({"messages": [{"role": "user", "content": "hi"}]})
    assert 400 <= answer.status < 500
    assert answer.answered
    assert error_of(answer)["message"]


# -- implementations that forward to an upstream -------------------------------------------------


async def test_body_is_sent_and_returned_byte_for_byte(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    odd = '{ "a" :  1.50 , "b":"\\u00e9" }'
    body = json.dumps({"model": "m", "messages": [], "fake": {"text_body": odd}}, indent=None).encode()
    async with run_with() as run:
        answer = await run.backend.attempt(CHAT, body)
        assert run.fake.key_count(hashlib.blake2b(body, digest_size=8).hexdigest()) == 1
    assert answer.status == 200
    assert answer.body == odd.encode()


async def test_request_id_comes_from_upstream(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat("rid"))
    assert answer.request_id.startswith("req_fake")


@pytest.mark.parametrize("status", [400, 404, 408, 409, 429, 500, 502, 503])
async def test_an_error_status_comes_back_with_its_body_after_one_request(
    harness: Harness, run_with: Callable[..., Any], status: int
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat(f"e{status}", status=status))
        assert run.fake.key_count(f"e{status}") == 1  # no retries inside the backend
    assert answer.status == status
    assert answer.answered
    assert error_of(answer)["code"] == f"fake_{status}"
    assert answer.should_retry is None
    assert answer.retry_after is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry_after": "7"}, 7.0),
        ({"retry_after_ms": "1500"}, 1.5),
        ({"retry_after": "3600"}, 3600.0),
        ({"retry_after": "0"}, 0.0),
        ({"retry_after": "soon"}, None),
    ],
)
async def test_retry_after_is_read(
    harness: Harness, run_with: Callable[..., Any], headers: dict[str, str], expected: float | None
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat("limited", status=429, **headers))
    assert answer.status == 429
    assert answer.retry_after == expected


@pytest.mark.parametrize(("header", "verdict"), [("true", True), ("false", False), ("maybe", None)])
async def test_x_should_retry_is_read(
    harness: Harness, run_with: Callable[..., Any], header: str, verdict: bool | None
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat(f"verdict-{header}", status=500, should_retry=header))
    assert answer.status == 500
    assert answer.should_retry is verdict


async def test_a_timeout_is_an_unanswered_504(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(timeout_s=0.2) as run:
        answer = await run.attempt(chat("stuck", hang=True))
        assert run.fake.key_count("stuck") == 1
    assert (answer.status, answer.answered, answer.reached) == (504, False, True)
    assert error_of(answer)["code"] == "upstream_timeout"
    assert answer.request_id.startswith("req_")


async def test_a_reset_is_an_unanswered_502(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        broken = await run.attempt(chat("reset-always", reset=True))
        after = await run.attempt(chat("after-reset"))
    assert (broken.status, broken.answered, broken.reached) == (502, False, True)
    assert error_of(broken)["code"] == "upstream_unreachable"
    assert after.status == 200  # the pool does not keep the broken connection


async def test_connection_refused_never_reached_the_upstream(harness: Harness) -> None:
    harness.require_forwarding()
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = Options(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-very-secret")
    backend = harness.make(options)
    await backend.start()
    try:
        answer = await backend.attempt(CHAT, json.dumps(chat("refused")).encode())
    finally:
        await backend.close()
    assert (answer.status, answer.answered, answer.reached) == (502, False, False)
    error = error_of(answer)
    assert error["code"] == "upstream_unreachable"
    assert "attempt" not in error["message"]  # the scheduler, not the backend, knows how many
    assert b"sk-very-secret" not in answer.body
    assert "sk-very-secret" not in repr(backend)


@pytest.mark.parametrize(
    ("status", "text", "final_status", "needle"),
    [
        (400, "oops, not json", 400, "oops, not json"),
        (418, "", 418, "empty body"),
        (400, "[1, 2]", 400, "[1, 2]"),
        (500, "Internal Server Error", 500, "Internal Server Error"),
        (200, "Service temporarily overloaded", 502, "Service temporarily overloaded"),
    ],
)
async def test_non_object_bodies_are_wrapped(
    harness: Harness, run_with: Callable[..., Any], status: int, text: str, final_status: int, needle: str
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat(f"text-{status}", status=status, text_body=text))
    assert answer.status == final_status
    error = error_of(answer)
    assert needle in error["message"]


async def test_long_non_json_body_is_truncated(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat("long", status=400, text_body="x" * 100_000))
    assert len(error_of(answer)["message"]) < 1100


async def test_pretty_printed_json_is_made_one_line(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.attempt(chat("pretty", text_body='{\n  "a": 1,\n  "b": [1, 2]\n}\n'))
    assert answer.status == 200
    assert answer.body == b'{"a":1,"b":[1,2]}'


async def test_connections_never_exceed_the_limit(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(max_concurrency=4) as run:
        answers = await asyncio.gather(*(run.attempt(chat(f"c{n}", delay_ms=5)) for n in range(40)))
        assert run.fake.max_in_flight <= 4
        assert run.fake.requests == 40
    assert all(answer.status == 200 for answer in answers)


async def test_authorization_and_content_type_are_sent(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with(api_key="sk-test-key") as run:
        await run.attempt(chat("auth"))
        headers = run.fake.last_headers
    assert headers["Authorization"] == "Bearer sk-test-key"
    assert headers["Content-Type"] == "application/json"


async def test_no_authorization_without_a_key(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        await run.attempt(chat("anon"))
        assert "Authorization" not in run.fake.last_headers


# -- HttpBackend specifics --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "endpoint", "expected"),
    [
        ("http://h:1/v1", "/v1/chat/completions", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/", "/v1/embeddings", "http://h:1/v1/embeddings"),
        ("http://h:1", "/v1/chat/completions", "http://h:1/v1/chat/completions"),
        ("https://h/openai/v1", "/v1/responses", "https://h/openai/v1/responses"),
        ("https://h/openai", "/v1/responses", "https://h/openai/v1/responses"),
        ("http://h:1/v1", "/v1beta/x", "http://h:1/v1/v1beta/x"),
    ],
)
def test_url_rule(base_url: str, endpoint: str, expected: str) -> None:
    backend = make_http(Options(base_url=base_url))
    assert isinstance(backend, HttpBackend)
    assert str(backend.url_for(endpoint)) == expected


async def test_base_url_without_v1_works(fake: FakeUpstream) -> None:
    backend = make_http(Options(base_url=fake.base_url.removesuffix("/v1")))
    await backend.start()
    try:
        answer = await backend.attempt(CHAT, json.dumps(chat("no-v1")).encode())
    finally:
        await backend.close()
    assert answer.status == 200
    assert fake.by_endpoint == {CHAT: 1}


async def test_attempt_before_start_is_an_error() -> None:
    backend = make_http(Options(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeError, match="not started"):
        await backend.attempt(CHAT, b"{}")
    await backend.close()  # closing an unstarted backend is harmless


def test_invalid_utf8_is_not_passed_through() -> None:
    status, body = normalize_body(200, b'{"text": "\xff"}')
    assert status == 502
    assert json.loads(body)["error"]["code"] == "upstream_invalid_response"


@given(status=st.integers(min_value=100, max_value=599), data=st.binary(max_size=300))
def test_any_upstream_body_becomes_one_line_json_object(status: int, data: bytes) -> None:
    final, body = normalize_body(status, data)
    assert isinstance(json.loads(body), dict)
    assert b"\n" not in body
    assert b"\r" not in body
    assert final == status or (final == 502 and 200 <= status < 300)


@given(value=st.dictionaries(st.text(), st.recursive(st.none() | st.integers() | st.text(), st.lists)))
def test_one_line_json_objects_pass_unchanged(value: dict[str, Any]) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    assert normalize_body(200, data) == (200, data)
