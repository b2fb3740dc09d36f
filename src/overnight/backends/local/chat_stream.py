"""Streamed answers of `smollm2-135m-instruct`: generated on the model's thread, sent as they come.

The generating thread hands each step (chat_events) to the event loop through a `Handoff`: a queue the
loop reads, filled with `call_soon_threadsafe`, so the loop never waits on the model. The thread looks
at the handoff's `cancelled` flag between two steps; closing the stream (read to its end, or the client
went away) sets it, so the generation stops at its next token and frees its instance. A failure before
the first step (a prompt too long for the context, ...) is an error answer; a later one ends the stream
with an error event.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal

from overnight.backends.local.base import LocalStream, Refusal
from overnight.backends.local.chat_events import Encoder, Finished, Piece, Step, StopScanner, error_event
from overnight.backends.local.chat_requests import Generation, Job
from overnight.domain.models import Usage

log = logging.getLogger("overnight.local")

Chunks = Generator[tuple[str, str | None], None, None]  # llama.cpp's stream: (text, finish reason or None)


class _End:
    """The generating thread is done."""


END = _End()
_Item = Step | BaseException | _End


class Handoff:
    """Steps from the generating thread to the event loop, in order, and the flag that stops it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.cancelled = threading.Event()

    def put(self, item: _Item) -> None:
        """From the generating thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody reads any more
            self.cancelled.set()

    def run(self, work: Callable[[], None]) -> None:
        """Run `work` on the generating thread, then tell the reader it ended, or how it failed."""
        try:
            work()
        except Refusal as refusal:
            self.put(refusal)
        except Exception as exc:
            log.exception("a local model failed while streaming its answer")
            self.put(exc)
        finally:
            self.put(END)

    async def get(self) -> list[_Item]:
        """The next items: at least one, and every other one already there."""
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items


@dataclass(slots=True)
class Tally:
    """A stream's tokens so far: the generating thread adds, the loop reads once it has stopped."""

    prompt: int = 0
    completion: int = 0

    def usage(self) -> Usage:
        return Usage(input_tokens=self.prompt, output_tokens=self.completion)


class TokenCounter:
    """A llama.cpp logits processor that changes nothing and counts: the prompt's tokens (the input the
    first sampling sees) and the tokens sampled. The end-of-turn token is sampled but not part of the
    answer (`at_end_of_turn`), as llama.cpp counts its own usage."""

    def __init__(self) -> None:
        self.prompt = 0
        self.sampled = 0
        self.at_end_of_turn = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if not self.sampled:
            self.prompt = len(input_ids)
        self.sampled += 1
        return scores

    @property
    def completion(self) -> int:
        return self.sampled - 1 if self.at_end_of_turn else self.sampled

    def add_to(self, tally: Tally, *, with_prompt: bool) -> None:
        tally.prompt += self.prompt if with_prompt else 0
        tally.completion += self.completion


def stream_job(
    chunks_of: Callable[[Job, int, int, TokenCounter], Chunks], job: Job, handoff: Handoff, tally: Tally
) -> None:
    """Every choice of `job` (`chunks_of(job, input, choice, counter)` generates one), step by step into
    `handoff`, until it is cancelled. Blocking: runs on the generating thread."""
    for index in range(job.inputs):
        for choice in range(job.n):
            counter = TokenCounter()
            steps = generation_steps(
                chunks_of(job, index, choice, counter), job.sampling.stop, counter, index * job.n + choice
            )
            try:
                for step in steps:
                    if handoff.cancelled.is_set():
                        return
                    handoff.put(step)
            finally:
                steps.close()
                counter.add_to(tally, with_prompt=choice == 0)


def generation_steps(
    chunks: Chunks, stops: tuple[str, ...], counter: TokenCounter, choice: int
) -> Generator[Step, None, None]:
    """One generation as steps: its text as the model writes it, cut at the first stop sequence (llama.cpp
    is given none, so that its own "stop" means the end of the turn), then `Finished`."""
    scanner = StopScanner(stops)
    texts: list[str] = []
    finish: Literal["stop", "length"] = "length"
    try:
        for text, reason in chunks:
            shown = scanner.feed(text)
            if shown:
                texts.append(shown)
                yield Piece(choice, shown)
            if scanner.stopped:
                finish = "stop"
                break
            if reason is not None:
                finish = "length" if reason == "length" else "stop"
                counter.at_end_of_turn = finish == "stop"
        tail = scanner.flush()
        if tail:
            texts.append(tail)
            yield Piece(choice, tail)
    finally:
        chunks.close()
    yield Finished(choice, Generation("".join(texts), finish, counter.prompt, counter.completion))


async def open_stream(
    future: concurrent.futures.Future[None], handoff: Handoff, tally: Tally, encoder: Encoder
) -> tuple[int, bytes] | LocalStream:
    """The stream once its first step has come; the error answer when the request failed before one
    (a Refusal is a 400; anything else is raised)."""
    try:
        first = await handoff.get()
    except BaseException:
        await stop(future, handoff)
        raise
    head = first[0]
    if isinstance(head, BaseException):
        await stop(future, handoff)
        if isinstance(head, Refusal):
            return head.answer()
        raise head
    events = _events(first, handoff, encoder)

    async def close() -> None:
        try:
            await events.aclose()
        finally:
            await stop(future, handoff)

    return LocalStream(events, close, tally.usage)


async def stop(future: concurrent.futures.Future[None], handoff: Handoff) -> None:
    """Stop the generation: never started if it still waits for an instance, else at its next token."""
    handoff.cancelled.set()
    if not future.cancel():
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(future)


async def _events(first: list[_Item], handoff: Handoff, encoder: Encoder) -> AsyncGenerator[bytes, None]:
    items = first
    while True:
        out: list[bytes] = []
        for item in items:
            if isinstance(item, _End):
                yield b"".join([*out, encoder.end()])
                return
            if isinstance(item, BaseException):
                yield b"".join([*out, _failure(item)])
                return
            out.append(encoder.step(item))
        data = b"".join(out)
        if data:
            yield data
        items = await handoff.get()


def _failure(exc: BaseException) -> bytes:
    if isinstance(exc, Refusal):
        return error_event(exc.message, kind="invalid_request_error", param=exc.param, code=exc.code)
    return error_event("The local model failed while answering this request.", kind="server_error")
