"""Every Backend implementation against one suite, driven by a real fake upstream server.

Each implementation comes as a `Harness`. Expectations are model-independent: a success is a 2xx
with a JSON object body, failures are OpenAI-shaped. Tests that steer the upstream's failures with
the `fake` directive need a backend that forwards requests to FakeUpstream (`forwards = True`).
Nothing here depends on machine speed: retry sleeps are recorded, not slept.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.backends.base import Backend, UpstreamResponse
from overnight.backends.http import HttpBackend, normalize_body
from overnight.backends.local.backend import LocalBackend
from overnight.backends.local.embeddings import MiniLmEmbeddings
from overnight.backends.local.embeddings import is_available as embeddings_available
from overnight.config import BackendConfig
from support.fake_upstream import FakeUpstream
from support.local_models import EchoChat

CHAT = "/v1/chat/completions"
GENEROUS_S = 30.0


@dataclass
class Options:
    base_url: str
    max_concurrency: int = 4
    timeout_s: float = GENEROUS_S
    max_attempts: int = 3
    api_key: str | None = None
    delays: list[float] = field(default_factory=list)
    sleep: Callable[[float], Awaitable[object]] | None = None

    async def record_sleep(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def make_http(options: Options) -> Backend:
    config = BackendConfig(name="test", base_url=options.base_url, max_concurrency=options.max_concurrency)
    return HttpBackend(
        config,
        api_key=options.api_key,
        timeout_s=options.timeout_s,
        max_attempts=options.max_attempts,
        base_delay_s=0.5,
        max_delay_s=30.0,
        rand=lambda: 0.0,  # no jitter: delays are exactly 0.5, 1, 2, ...
        sleep=options.sleep or options.record_sleep,
    )


@functools.cache
def shared_embeddings() -> MiniLmEmbeddings:
    return MiniLmEmbeddings(batch_size=8)  # loads once, on first use; each backend starts and closes it


def make_local(options: Options) -> Backend:
    aliases = {"fake-chat": "echo-chat", "fake-embed": "all-minilm-l6-v2"}
    return LocalBackend([shared_embeddings(), EchoChat()], aliases)


@dataclass(frozen=True)
class Harness:
    make: Callable[[Options], Backend]
    forwards: bool  # requests reach FakeUpstream, so `fake` directives and its counters apply
    endpoints: frozenset[str] | None = None  # those it serves; None: all

    def require_forwarding(self) -> None:
        if not self.forwards:
            pytest.skip("this backend does not forward requests to an upstream")

    def require_endpoint(self, endpoint: str) -> None:
        if self.endpoints is not None and endpoint not in self.endpoints:
            pytest.skip(f"this backend does not serve {endpoint}")


LOCAL_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
IMPLEMENTATIONS = [
    pytest.param(Harness(make_http, forwards=True), id="http"),
    pytest.param(
        Harness(make_local, forwards=False, endpoints=LOCAL_ENDPOINTS),
        id="local",
        marks=pytest.mark.skipif(not embeddings_available(), reason="local embeddings not installed"),
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def harness(request: pytest.FixtureRequest) -> Harness:
    value: Harness = request.param
    return value


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@dataclass
class Run:
    backend: Backend
    options: Options
    fake: FakeUpstream

    async def send(self, body: dict[str, Any], endpoint: str = CHAT) -> UpstreamResponse:
        return await asyncio.wait_for(self.backend.send(endpoint, json.dumps(body).encode()), 120)


@pytest.fixture
def run_with(harness: Harness, fake: FakeUpstream) -> Callable[..., Any]:
    """`async with run_with(**options) as run:` a started backend pointed at the fake."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def open_run(**overrides: Any) -> AsyncIterator[Run]:
        options = Options(base_url=fake.base_url, **overrides)
        backend = harness.make(options)
        await backend.start()
        try:
            yield Run(backend, options, fake)
        finally:
            await backend.close()

    return open_run


def chat(key: str, **fake: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    body["fake"] = {"key": key, **fake}
    return body


def error_of(answer: UpstreamResponse) -> dict[str, Any]:
    body = json.loads(answer.body)
    assert isinstance(body, dict)
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    return dict(error)


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
        answer = await run.send(body, endpoint)
    assert 200 <= answer.status < 300
    decoded = json.loads(answer.body)
    assert isinstance(decoded, dict)
    assert b"\n" not in answer.body
    assert answer.request_id


async def test_chat_success_reports_usage(run_with: Callable[..., Any]) -> None:
    async with run_with() as run:
        answer = await run.send({"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]})
    usage = json.loads(answer.body)["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_many_concurrent_sends_all_answer(run_with: Callable[..., Any]) -> None:
    async with run_with(max_concurrency=3) as run:
        bodies = [
            {"model": "fake-chat", "messages": [{"role": "user", "content": str(n)}]} for n in range(50)
        ]
        answers = await asyncio.gather(*(run.send(body) for body in bodies))
    assert all(answer.status == 200 for answer in answers)


# -- implementations that forward to an upstream -------------------------------------------------


async def test_body_is_sent_and_returned_byte_for_byte(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    odd = '{ "a" :  1.50 , "b":"\\u00e9" }'
    body = json.dumps({"model": "m", "messages": [], "fake": {"text_body": odd}}, indent=None).encode()
    async with run_with() as run:
        answer = await run.backend.send(CHAT, body)
        assert run.fake.key_count(hashlib.blake2b(body, digest_size=8).hexdigest()) == 1
    assert answer.status == 200
    assert answer.body == odd.encode()


async def test_request_id_comes_from_upstream(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.send(chat("rid"))
    assert answer.request_id.startswith("req_fake")


async def test_final_error_status_is_returned_with_its_body(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.send(chat("nf", status=404))
        assert run.fake.key_count("nf") == 1
    assert answer.status == 404
    assert error_of(answer)["code"] == "fake_404"
    assert run.options.delays == []


async def test_bad_request_is_final_at_once(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(max_attempts=5) as run:
        answer = await run.send(chat("bad", status=400))
        assert run.fake.key_count("bad") == 1
    assert answer.status == 400
    assert error_of(answer)["type"] == "invalid_request_error"
    assert run.options.delays == []


async def test_server_error_is_retried_then_succeeds(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(max_attempts=3) as run:
        answer = await run.send(chat("flaky", status=500, fail_times=2))
        assert run.fake.key_count("flaky") == 3
    assert answer.status == 200
    assert "usage" in json.loads(answer.body)
    assert run.options.delays == [0.5, 1.0]


@pytest.mark.parametrize("status", [408, 409, 429, 502, 503])
async def test_persistent_transient_error_ends_after_max_attempts(
    harness: Harness, run_with: Callable[..., Any], status: int
) -> None:
    harness.require_forwarding()
    async with run_with(max_attempts=4) as run:
        answer = await run.send(chat("down", status=status, retry_after="0"))
        assert run.fake.key_count("down") == 4
    assert answer.status == status
    assert error_of(answer)["code"] == f"fake_{status}"
    assert run.options.delays == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"retry_after": "7"}, 7.0), ({"retry_after_ms": "1500"}, 1.5), ({"retry_after": "3600"}, 30.0)],
)
async def test_rate_limit_honours_retry_after(
    harness: Harness, run_with: Callable[..., Any], headers: dict[str, str], expected: float
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.send(chat("limited", status=429, fail_times=1, **headers))
    assert answer.status == 200
    assert run.options.delays == [expected]


async def test_timeouts_end_as_504(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(timeout_s=0.2, max_attempts=2) as run:
        answer = await run.send(chat("stuck", hang=True))
        assert run.fake.key_count("stuck") == 2
    assert answer.status == 504
    assert error_of(answer)["code"] == "upstream_timeout"
    assert answer.request_id.startswith("req_")
    assert len(run.options.delays) == 1


async def test_timeout_then_success(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    # any of the four later attempts may answer; a slow machine only makes more of them time out
    async with run_with(timeout_s=0.5, max_attempts=5) as run:
        answer = await run.send(chat("slow-once", hang=True, fail_times=1))
    assert answer.status == 200


async def test_connection_reset_is_retried(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(max_attempts=3) as run:
        recovered = await run.send(chat("reset-once", reset=True, fail_times=1))
        broken = await run.send(chat("reset-always", reset=True))
        assert run.fake.key_count("reset-always") == 3
    assert recovered.status == 200
    assert broken.status == 502
    assert error_of(broken)["code"] == "upstream_unreachable"


async def test_connection_refused_ends_as_502(harness: Harness) -> None:
    harness.require_forwarding()
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = Options(base_url=f"http://127.0.0.1:{port}/v1", max_attempts=3, api_key="sk-very-secret")
    backend = harness.make(options)
    await backend.start()
    try:
        answer = await backend.send(CHAT, json.dumps(chat("refused")).encode())
    finally:
        await backend.close()
    assert answer.status == 502
    error = error_of(answer)
    assert error["code"] == "upstream_unreachable"
    assert b"sk-very-secret" not in answer.body
    assert "sk-very-secret" not in repr(backend)
    assert len(options.delays) == 2


@pytest.mark.parametrize(
    ("status", "text", "final_status", "needle"),
    [
        (400, "oops, not json", 400, "oops, not json"),
        (418, "", 418, "empty body"),
        (400, "[1, 2]", 400, "[1, 2]"),
        (200, "Service temporarily overloaded", 502, "Service temporarily overloaded"),
    ],
)
async def test_non_object_bodies_are_wrapped(
    harness: Harness, run_with: Callable[..., Any], status: int, text: str, final_status: int, needle: str
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.send(chat(f"text-{status}", status=status, text_body=text))
    assert answer.status == final_status
    error = error_of(answer)
    assert needle in error["message"]


async def test_long_non_json_body_is_truncated(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.send(chat("long", status=400, text_body="x" * 100_000))
    assert len(error_of(answer)["message"]) < 1100


async def test_pretty_printed_json_is_made_one_line(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await run.send(chat("pretty", text_body='{\n  "a": 1,\n  "b": [1, 2]\n}\n'))
    assert answer.status == 200
    assert answer.body == b'{"a":1,"b":[1,2]}'


async def test_concurrency_never_exceeds_the_limit(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with(max_concurrency=4) as run:
        answers = await asyncio.gather(*(run.send(chat(f"c{n}", delay_ms=5)) for n in range(40)))
        assert run.fake.max_in_flight <= 4
        assert run.fake.requests == 40
    assert all(answer.status == 200 for answer in answers)


async def test_sleeping_retries_do_not_hold_slots(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    gate, both_asleep = asyncio.Event(), asyncio.Event()
    sleeping: list[float] = []

    async def held_sleep(seconds: float) -> None:
        sleeping.append(seconds)
        if len(sleeping) == 2:
            both_asleep.set()
        await gate.wait()

    async with run_with(max_concurrency=2, sleep=held_sleep) as run:
        retrying = [asyncio.create_task(run.send(chat(f"r{n}", status=503, fail_times=1))) for n in range(2)]
        await asyncio.wait_for(both_asleep.wait(), 120)
        # both retries are asleep; were they holding their slots, this would wait for ever
        assert (await run.send(chat("free"))).status == 200
        gate.set()
        assert [(await task).status for task in retrying] == [200, 200]


async def test_authorization_and_content_type_are_sent(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with(api_key="sk-test-key") as run:
        await run.send(chat("auth"))
        headers = run.fake.last_headers
    assert headers["Authorization"] == "Bearer sk-test-key"
    assert headers["Content-Type"] == "application/json"


async def test_no_authorization_without_a_key(harness: Harness, run_with: Callable[..., Any]) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        await run.send(chat("anon"))
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
        answer = await backend.send(CHAT, json.dumps(chat("no-v1")).encode())
    finally:
        await backend.close()
    assert answer.status == 200
    assert fake.by_endpoint == {CHAT: 1}


async def test_send_before_start_is_an_error() -> None:
    backend = make_http(Options(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(RuntimeError, match="not started"):
        await backend.send(CHAT, b"{}")
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
