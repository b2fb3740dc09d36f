"""The streamed answers of `smollm2-135m-instruct` as server-sent events shaped like OpenAI's. Pure.

The model's thread reports each generation as `Piece`s of text then one `Finished`; an encoder per
endpoint turns each step into the bytes of its events:

- chat: `chat.completion.chunk`s: a choice's first chunk has the role, then one per piece of content,
  then one with `finish_reason`; with `stream_options.include_usage` every chunk has `usage: null` and a
  last chunk with no choices carries the usage; then `data: [DONE]`.
- completions: `text_completion` chunks, one per piece then one with `finish_reason` (and the usage
  chunk when asked); then `data: [DONE]`.
- responses: `response.created`, `.in_progress`, `.output_item.added`, `.content_part.added`, one
  `.output_text.delta` per piece, then `.output_text.done`, `.content_part.done`, `.output_item.done`
  and `response.completed` (or `.incomplete` at `max_output_tokens`), each an `event:` with its `data:`.

Choices are numbered as in the whole answer: choice i of prompt p is `p * n + i`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from overnight.backends.local.chat_answers import (
    SYSTEM_FINGERPRINT,
    chat_usage,
    message_item,
    new_id,
    output_text,
    response_object,
    response_status,
    response_usage,
    usage_counts,
)
from overnight.backends.local.chat_requests import CHAT, COMPLETIONS, Generation, Job

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class Piece:
    """Text of choice `choice`, in order, as the model writes it."""

    choice: int
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """Choice `choice` is done: its whole text, finish reason and token counts."""

    choice: int
    generation: Generation


Step = Piece | Finished


def data_event(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + _encode(data) + b"\n\n"


def error_event(message: str, *, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    """An error after the stream began: the SDK raises it as an APIError."""
    return data_event({"error": {"message": message, "type": kind, "param": param, "code": code}})


def include_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class Encoder(Protocol):
    def step(self, step: Step) -> bytes:
        """The events of one step."""
        ...

    def end(self) -> bytes:
        """The events after the last step."""
        ...


class _Choices:
    """What chat and completions streams share: an id, the usage chunk, [DONE]."""

    object_name = ""
    prefix = ""

    def __init__(self, job: Job, model_name: str, with_usage: bool) -> None:
        self._n = job.n
        self._head = {"id": new_id(self.prefix), "object": self.object_name, "created": int(time.time())}
        self._head |= {"model": model_name, "system_fingerprint": SYSTEM_FINGERPRINT}
        self._with_usage = with_usage
        self._finished: dict[int, Generation] = {}

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        body = {**self._head, "choices": choices}
        if self._with_usage:
            body["usage"] = None
        return data_event(body)

    def _done(self, finished: Finished) -> None:
        self._finished[finished.choice] = finished.generation

    def end(self) -> bytes:
        if not self._with_usage:
            return DONE
        generations = [self._finished[index] for index in sorted(self._finished)]
        usage = chat_usage(*usage_counts(generations, self._n))
        return data_event({**self._head, "choices": [], "usage": usage}) + DONE


class ChatEvents(_Choices):
    object_name = "chat.completion.chunk"
    prefix = "chatcmpl-"

    def __init__(self, job: Job, model_name: str, with_usage: bool) -> None:
        super().__init__(job, model_name, with_usage)
        self._started: set[int] = set()

    def _choice(self, index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._chunk([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}])

    def step(self, step: Step) -> bytes:
        index = step.choice
        out = b""
        if index not in self._started:
            self._started.add(index)
            out = self._choice(index, {"role": "assistant", "content": "", "refusal": None})
        if isinstance(step, Piece):
            return out + (self._choice(index, {"content": step.text}) if step.text else b"")
        self._done(step)
        return out + self._choice(index, {}, step.generation.finish_reason)


class CompletionEvents(_Choices):
    object_name = "text_completion"
    prefix = "cmpl-"

    def _choice(self, index: int, text: str, finish: str | None = None) -> bytes:
        return self._chunk([{"text": text, "index": index, "logprobs": None, "finish_reason": finish}])

    def step(self, step: Step) -> bytes:
        if isinstance(step, Piece):
            return self._choice(step.choice, step.text) if step.text else b""
        self._done(step)
        return self._choice(step.choice, "", step.generation.finish_reason)


class ResponseEvents:
    """The events of one response (one choice: /v1/responses has no `n`)."""

    def __init__(self, job: Job, request: dict[str, Any], model_name: str) -> None:
        self._job, self._request, self._model = job, request, model_name
        self._ids = (new_id("resp_"), int(time.time()))
        self._message_id = new_id("msg_")
        self._sequence = 0
        self._started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return data_event(data, kind)

    def _response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None) -> Any:
        return response_object(
            self._job, self._request, self._model, ids=self._ids, status=status, output=output, usage=usage
        )

    def _part(self) -> dict[str, Any]:
        return {"item_id": self._message_id, "output_index": 0, "content_index": 0}

    def _begin(self) -> bytes:
        self._started = True
        begun = self._response("in_progress", [], None)
        return b"".join(
            [
                self._event("response.created", response=begun),
                self._event("response.in_progress", response=begun),
                self._event(
                    "response.output_item.added",
                    output_index=0,
                    item=message_item(self._message_id, "in_progress", None),
                ),
                self._event("response.content_part.added", **self._part(), part=output_text("")),
            ]
        )

    def step(self, step: Step) -> bytes:
        out = b"" if self._started else self._begin()
        if isinstance(step, Piece):
            if not step.text:
                return out
            return out + self._event(
                "response.output_text.delta", **self._part(), delta=step.text, logprobs=[]
            )
        generation = step.generation
        status = response_status(generation)
        item = message_item(self._message_id, status, generation.text)
        usage = response_usage(generation.prompt_tokens, generation.completion_tokens)
        return out + b"".join(
            [
                self._event("response.output_text.done", **self._part(), text=generation.text, logprobs=[]),
                self._event("response.content_part.done", **self._part(), part=output_text(generation.text)),
                self._event("response.output_item.done", output_index=0, item=item),
                self._event(f"response.{status}", response=self._response(status, [item], usage)),
            ]
        )

    def end(self) -> bytes:
        return b""


def encoder_for(endpoint: str, job: Job, request: dict[str, Any], model_name: str) -> Encoder:
    if endpoint == CHAT:
        return ChatEvents(job, model_name, include_usage(request))
    if endpoint == COMPLETIONS:
        return CompletionEvents(job, model_name, include_usage(request))
    return ResponseEvents(job, request, model_name)


class StopScanner:
    """A generation's text as it may be shown while its stop sequences are looked for.

    `feed` returns what can be sent now: text that cannot begin a stop sequence. It holds back a tail
    that might (until the next text tells), and at a stop sequence returns the text before it and sets
    `stopped`. `flush` gives what is held once the generation ends without one.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops:
            return text
        text = self._held + text
        found = [text.find(stop) for stop in self._stops if stop in text]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        keep = max((self._prefix_at_end(text, stop) for stop in self._stops), default=0)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _prefix_at_end(text: str, stop: str) -> int:
        """The length of the longest proper prefix of `stop` that `text` ends with."""
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return size
        return 0
