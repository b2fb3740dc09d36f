"""Backend.stream, on every implementation (see test_backend_contract.py for the harness and the rules):
an event stream passed on as it arrives, or a refusal that names `stream`; errors and lost answers as
`attempt` reports them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from overnight.backends.base import Attempt, StreamAnswer
from support.backend_harness import CHAT, GENEROUS_S, Harness, Options, Run, chat, error_of


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


async def test_embeddings_asked_to_stream_answer_whole_or_refuse_naming_stream(
    harness: Harness, run_with: Callable[..., Any]
) -> None:
    """Embeddings have no stream: an upstream answers whole; the local models refuse, naming `stream`."""
    async with run_with() as run:
        answer = await open_stream(
            run, {"model": "fake-embed", "input": "hi", "stream": True}, "/v1/embeddings"
        )
    assert isinstance(answer, Attempt)
    if harness.forwards:
        assert answer.status == 200
        assert json.loads(answer.body)["object"] == "list"
    else:
        assert answer.status == 400
        assert error_of(answer)["param"] == "stream"
        assert answer.should_retry is False


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
