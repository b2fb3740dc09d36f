"""The streamed answers of the local chat model, without the model: the events (chat_events), the stop
sequences, and the steps of one generation (chat_stream.generation_steps). Events are checked against
the official SDK's types in strict mode, with no key the type does not know."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from overnight.backends.local.chat_events import (
    DONE,
    ChatEvents,
    CompletionEvents,
    Encoder,
    Finished,
    Piece,
    ResponseEvents,
    Step,
    StopScanner,
    encoder_for,
)
from overnight.backends.local.chat_requests import CHAT, COMPLETIONS, RESPONSES, Generation, parse
from overnight.backends.local.chat_stream import Chunks, TokenCounter, generation_steps
from support.sdk_types import no_unknown_keys

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "hi"}]


def sse(data: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each server-sent event."""
    events: list[tuple[str | None, str]] = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        events.append((name, next(line[6:] for line in lines if line.startswith("data: "))))
    assert data.endswith(b"\n\n")
    return events


def run(encoder: Encoder, steps: list[Step]) -> bytes:
    return b"".join(encoder.step(step) for step in steps) + encoder.end()


def generation(text: str, finish: Any = "stop", prompt: int = 7, completion: int = 3) -> Generation:
    return Generation(text, finish, prompt, completion)


def chat_chunks(data: bytes) -> list[ChatCompletionChunk]:
    events = sse(data)
    assert events[-1] == (None, "[DONE]")
    chunks = [ChatCompletionChunk.model_validate(json.loads(body), strict=True) for _, body in events[:-1]]
    for chunk in chunks:
        no_unknown_keys(chunk)
    return chunks


# -- chat ---------------------------------------------------------------------------------------------


def test_chat_chunks_are_openais() -> None:
    job = parse(CHAT, {"messages": MESSAGES})
    steps: list[Step] = [Piece(0, "Hel"), Piece(0, "lo"), Finished(0, generation("Hello"))]
    chunks = chat_chunks(run(ChatEvents(job, MODEL, with_usage=False), steps))
    assert [chunk.choices[0].delta.role for chunk in chunks] == ["assistant", None, None, None]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "Hello"
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, None, None, "stop"]
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert {chunk.model for chunk in chunks} == {MODEL}
    assert all(chunk.usage is None for chunk in chunks)


def test_chat_usage_chunk_when_asked() -> None:
    job = parse(CHAT, {"messages": MESSAGES, "n": 2, "stream_options": {"include_usage": True}})
    encoder = encoder_for(CHAT, job, {"stream_options": {"include_usage": True}}, MODEL)
    steps: list[Step] = [
        Piece(0, "a"),
        Finished(0, generation("a", prompt=7, completion=1)),
        Finished(1, generation("", "length", prompt=7, completion=4)),
    ]
    data = run(encoder, steps)
    assert b'"usage":null' in data.split(b"\n\n")[0]  # every chunk says `usage: null` but the last
    chunks = chat_chunks(data)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (7, 5, 12)
    # each choice begins with its role, and ends with its own finish reason
    assert [
        (c.choices[0].index, c.choices[0].delta.role) for c in chunks[:-1] if c.choices[0].delta.role
    ] == [
        (0, "assistant"),
        (1, "assistant"),
    ]
    assert [
        (c.choices[0].index, c.choices[0].finish_reason) for c in chunks[:-1] if c.choices[0].finish_reason
    ] == [
        (0, "stop"),
        (1, "length"),
    ]


def test_an_empty_piece_sends_only_the_role() -> None:
    job = parse(CHAT, {"messages": MESSAGES})
    encoder = ChatEvents(job, MODEL, with_usage=False)
    assert len(sse(encoder.step(Piece(0, "")))) == 1
    assert encoder.step(Piece(0, "")) == b""


# -- completions ---------------------------------------------------------------------------------------


def test_completion_chunks_are_openais() -> None:
    job = parse(COMPLETIONS, {"prompt": ["a", "b"], "stream_options": {"include_usage": True}})
    steps: list[Step] = [
        Piece(0, "x"),
        Finished(0, generation("x", prompt=2, completion=1)),
        Piece(1, "y"),
        Finished(1, generation("y", "length", prompt=3, completion=16)),
    ]
    events = sse(run(CompletionEvents(job, MODEL, with_usage=True), steps))
    assert events[-1] == (None, "[DONE]")
    bodies = [json.loads(body) for _, body in events[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in bodies[:-1]] == [None, "stop", None, "length"]
    # OpenAI's own chunks carry `finish_reason: null` until a choice's last, which the SDK's type forbids
    # in strict mode: the rest of those is checked strictly with a finish reason put in
    for body in bodies:
        for choice in body["choices"]:
            choice["finish_reason"] = choice["finish_reason"] or "stop"
    chunks = [Completion.model_validate(body, strict=True) for body in bodies]
    for chunk in chunks:
        no_unknown_keys(chunk)
    assert [(c.choices[0].index, c.choices[0].text) for c in chunks[:-1]] == [
        (0, "x"),
        (0, ""),
        (1, "y"),
        (1, ""),
    ]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 17)
    assert chunks[0].object == "text_completion"


# -- responses -----------------------------------------------------------------------------------------


def response_events(data: bytes) -> list[Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    events = []
    for name, body in sse(data):
        event = adapter.validate_python(json.loads(body), strict=True)
        no_unknown_keys(event)
        assert name == event.type
        events.append(event)
    return events


@pytest.mark.parametrize(("finish", "status"), [("stop", "completed"), ("length", "incomplete")])
def test_response_events_are_openais(finish: Any, status: str) -> None:
    request = {"input": "hi", "instructions": "Be brief.", "metadata": {"k": "v"}, "max_output_tokens": 9}
    job = parse(RESPONSES, request)
    steps: list[Step] = [Piece(0, "Hi"), Piece(0, " there"), Finished(0, generation("Hi there", finish))]
    events = response_events(run(ResponseEvents(job, request, MODEL), steps))
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{status}",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress"
    assert events[0].response.usage is None
    final = events[-1].response
    assert final.id == events[0].response.id
    assert (final.status, final.output_text, final.instructions, final.metadata) == (
        status,
        "Hi there",
        "Be brief.",
        {"k": "v"},
    )
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 3)
    assert final.output[0].id == events[2].item.id == events[4].item_id
    assert (final.incomplete_details is None) == (status == "completed")


# -- stop sequences ------------------------------------------------------------------------------------


def test_stop_scanner_holds_what_may_begin_a_stop() -> None:
    scanner = StopScanner(("END", "\n\n"))
    assert scanner.feed("one E") == "one "
    assert scanner.feed("N") == ""
    assert scanner.feed("x two\n") == "ENx two"
    assert not scanner.stopped
    assert scanner.feed("\nthree") == ""
    assert scanner.stopped


def test_stop_scanner_cuts_at_the_earliest_stop_and_flushes_the_rest() -> None:
    scanner = StopScanner(("b", "a"))
    assert scanner.feed("xxab") == "xx"
    assert scanner.stopped
    held = StopScanner(("END",))
    assert held.feed("the EN") == "the "
    assert held.flush() == "EN"
    assert StopScanner(()).feed("anything END") == "anything END"


# -- one generation's steps ---------------------------------------------------------------------------


class FakeChunks:
    """llama.cpp's stream for generation_steps, sampling one token per chunk through the counter."""

    def __init__(self, counter: TokenCounter, texts: list[str], finish: str, prompt: int = 5) -> None:
        self.counter, self.texts, self.finish, self.prompt = counter, texts, finish, prompt
        self.closed = False

    def gen(self) -> Chunks:
        try:
            for text in self.texts:
                self.counter(list(range(self.prompt + self.counter.sampled)), None)
                yield text, None
            if self.finish == "stop":
                self.counter(list(range(self.prompt + self.counter.sampled)), None)  # the end-of-turn token
            yield "", self.finish
        finally:
            self.closed = True


def steps_of(texts: list[str], finish: str, stops: tuple[str, ...] = ()) -> tuple[list[Step], FakeChunks]:
    counter = TokenCounter()
    fake = FakeChunks(counter, texts, finish)
    return list(generation_steps(fake.gen(), stops, counter, 3)), fake


def test_steps_of_a_generation_that_ends_its_turn() -> None:
    steps, fake = steps_of(["Hel", "lo"], "stop")
    assert steps == [Piece(3, "Hel"), Piece(3, "lo"), Finished(3, Generation("Hello", "stop", 5, 2))]
    assert fake.closed


def test_steps_of_a_generation_cut_by_max_tokens() -> None:
    steps, _ = steps_of(["a", "b", "c"], "length")
    assert steps[-1] == Finished(3, Generation("abc", "length", 5, 3))


def test_steps_of_a_generation_cut_by_a_stop_sequence() -> None:
    steps, fake = steps_of(["one", " ST", "OP", " more"], "length", stops=("STOP",))
    # the token that completes the stop sequence counts, as llama.cpp counts it in a whole answer
    assert steps == [Piece(3, "one"), Piece(3, " "), Finished(3, Generation("one ", "stop", 5, 3))]
    assert fake.closed  # the generation was stopped there


def test_closing_the_steps_closes_the_generation() -> None:
    counter = TokenCounter()
    fake = FakeChunks(counter, ["a", "b", "c"], "stop")
    steps = generation_steps(fake.gen(), (), counter, 0)
    assert next(steps) == Piece(0, "a")
    steps.close()
    assert fake.closed
    assert counter.completion == 1


def test_done_is_the_end_of_chat_and_completions_only() -> None:
    job = parse(CHAT, {"messages": MESSAGES})
    assert ChatEvents(job, MODEL, with_usage=False).end() == DONE
    responses = parse(RESPONSES, {"input": "x"})
    assert ResponseEvents(responses, {"input": "x"}, MODEL).end() == b""
