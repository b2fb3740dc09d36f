"""Every Backend implementation against one suite, driven by a real fake upstream server.

Each implementation comes as a `Harness`. Expectations are model-independent: a success is a 2xx
with a JSON object body, failures are OpenAI-shaped, and one `attempt` is one request upstream:
retries are the scheduler's (tests/unit/test_scheduler.py). Tests that steer the upstream's
failures with the `fake` directive need a backend that forwards requests to FakeUpstream
(`forwards = True`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.backends.base import Attempt, Backend, StreamAnswer
from overnight.backends.http import HttpBackend, normalize_body
from overnight.backends.local.backend import LocalBackend
from overnight.backends.local.embeddings import MiniLmEmbeddings
from overnight.backends.local.embeddings import is_available as embeddings_available
from overnight.config import BackendConfig
from overnight.domain.results import usage_of
from support.fake_upstream import FakeUpstream
from support.local_models import EchoChat

CHAT = "/v1/chat/completions"
GENEROUS_S = 30.0


@dataclass
class Options:
    base_url: str
    max_concurrency: int = 4
    timeout_s: float = GENEROUS_S
    api_key: str | None = None


def make_http(options: Options) -> Backend:
    config = BackendConfig(name="test", base_url=options.base_url, max_concurrency=options.max_concurrency)
    return HttpBackend(config, api_key=options.api_key, timeout_s=options.timeout_s)


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
    streams: bool = True  # answers `stream: true` with an event stream (else refuses it with a 400)

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
        Harness(make_local, forwards=False, endpoints=LOCAL_ENDPOINTS, streams=False),
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

    async def attempt(self, body: dict[str, Any], endpoint: str = CHAT) -> Attempt:
        return await asyncio.wait_for(self.backend.attempt(endpoint, json.dumps(body).encode()), 120)


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


def error_of(answer: Attempt) -> dict[str, Any]:
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


# -- streaming: Backend.stream ------------------------------------------------------------------------


def streamed(key: str, **fake: Any) -> dict[str, Any]:
    body = chat(key, **fake)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


async def open_stream(run: Run, body: dict[str, Any], endpoint: str = CHAT) -> Attempt | StreamAnswer:
    return await asyncio.wait_for(run.backend.stream(endpoint, json.dumps(body).encode()), 120)


async def read_all(answer: StreamAnswer) -> bytes:
    try:
        return b"".join([chunk async for chunk in answer.chunks])
    finally:
        await answer.close()


def events_of(data: bytes) -> list[str]:
    return [line[5:].strip() for line in data.decode().splitlines() if line.startswith("data:")]


@pytest.mark.parametrize("endpoint", [CHAT, "/v1/completions", "/v1/responses"])
async def test_a_stream_is_events_or_a_refusal_naming_stream(
    harness: Harness, run_with: Callable[..., Any], endpoint: str
) -> None:
    harness.require_endpoint(endpoint)
    body: dict[str, Any] = {"model": "fake-chat", "stream": True}
    body.update({"prompt": "hi"} if endpoint == "/v1/completions" else {"input": "hi"})
    if endpoint == CHAT:
        body = streamed("s-every")
    async with run_with() as run:
        answer = await open_stream(run, body, endpoint)
        if not harness.streams:
            assert isinstance(answer, Attempt)
            assert answer.status == 400
            assert error_of(answer)["param"] == "stream"
            assert answer.should_retry is False
            return
        assert isinstance(answer, StreamAnswer)
        assert 200 <= answer.status < 300
        assert answer.content_type.startswith("text/event-stream")
        assert answer.request_id
        events = events_of(await read_all(answer))
    assert events
    decoded = [json.loads(event) for event in events if event != "[DONE]"]
    assert all(isinstance(event, dict) for event in decoded)
    if endpoint != "/v1/responses":
        assert events[-1] == "[DONE]"


async def test_a_stream_for_an_unknown_model_is_an_openai_error(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    async with run_with() as run:
        answer = await open_stream(run, {"stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert isinstance(answer, Attempt)
    assert 400 <= answer.status < 500
    assert error_of(answer)["message"]


async def test_a_stream_carries_the_usage_chunk_when_asked(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await open_stream(run, streamed("s-usage"))
        assert isinstance(answer, StreamAnswer)
        events = events_of(await read_all(answer))
    usage = json.loads(events[-2])["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_chunks_arrive_before_the_upstream_has_finished(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await open_stream(run, streamed("s-held", stream_hold=True))
        assert isinstance(answer, StreamAnswer)
        try:
            first = await asyncio.wait_for(anext(answer.chunks), GENEROUS_S)
            assert run.fake.held == 1  # the upstream is still in the middle of its answer
            assert b"chat.completion.chunk" in first
            run.fake.release(-1)
            rest = b"".join([chunk async for chunk in answer.chunks])
        finally:
            await answer.close()
    assert events_of(first + rest)[-1] == "[DONE]"


@pytest.mark.parametrize("status", [400, 429, 500, 503])
async def test_an_error_answer_to_a_stream_comes_back_whole_after_one_request(
    harness: Harness, run_with: Callable[..., Any], status: int
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await open_stream(run, streamed(f"s-e{status}", status=status, retry_after="2"))
        assert run.fake.key_count(f"s-e{status}") == 1
    assert isinstance(answer, Attempt)
    assert answer.status == status
    assert error_of(answer)["code"] == f"fake_{status}"
    assert answer.retry_after == 2.0


async def test_a_whole_answer_to_a_stream_request_comes_back_as_an_attempt(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()  # embeddings have no stream: the upstream answers whole
    async with run_with() as run:
        answer = await open_stream(
            run, {"model": "fake-embed", "input": "hi", "stream": True}, "/v1/embeddings"
        )
    assert isinstance(answer, Attempt)
    assert answer.status == 200
    assert json.loads(answer.body)["object"] == "list"


async def test_a_stream_cut_off_raises_connection_error(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with() as run:
        answer = await open_stream(run, streamed("s-cut", stream_reset=True))
        assert isinstance(answer, StreamAnswer)
        with pytest.raises(ConnectionError):
            await read_all(answer)
        after = await run.attempt(chat("after-cut"))
    assert after.status == 200


async def test_a_stream_with_no_answer_is_an_unanswered_504(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with(timeout_s=0.2) as run:
        answer = await open_stream(run, streamed("s-stuck", hang=True))
    assert isinstance(answer, Attempt)
    assert (answer.status, answer.answered, answer.reached) == (504, False, True)
    assert error_of(answer)["code"] == "upstream_timeout"


async def test_a_stream_to_no_server_never_reached_it(harness: Harness) -> None:
    harness.require_forwarding()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = harness.make(Options(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-very-secret"))
    await backend.start()
    try:
        answer = await backend.stream(CHAT, json.dumps(streamed("refused")).encode())
    finally:
        await backend.close()
    assert isinstance(answer, Attempt)
    assert (answer.status, answer.answered, answer.reached) == (502, False, False)
    assert b"sk-very-secret" not in answer.body


async def test_closing_a_stream_early_frees_its_connection(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    harness.require_forwarding()
    async with run_with(max_concurrency=1, api_key="sk-stream") as run:
        answer = await open_stream(run, streamed("s-early", stream_hold=True))
        assert isinstance(answer, StreamAnswer)
        await asyncio.wait_for(anext(answer.chunks), GENEROUS_S)
        await answer.close()  # the client went away: stop reading
        assert run.fake.last_headers["Authorization"] == "Bearer sk-stream"
        again = await open_stream(run, streamed("s-again"))
        assert isinstance(again, StreamAnswer)
        assert events_of(await read_all(again))[-1] == "[DONE]"


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
