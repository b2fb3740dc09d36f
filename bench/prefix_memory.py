"""The reorder buffers' memory on a big input, for the `prefix` bench: a process of its own, so its peak
RSS (VmHWM) is this run's alone.

`--mb` of chat lines (~LINE_BYTES each: one system prompt, an excerpt of one of DOCS documents, a
question), generated as the scheduler reads them so no file is held, go through one `BackendScheduler`
as FEEDS feeds at once (a worker's four shards) to a backend that answers at once. With `--ordering` the
backend has `prefix_ordering` with its default bounds. Prints one JSON line: the peak RSS, the time, and the
most any reorder buffer held (bytes and requests, looked at after every line it took) against its bound.

``python -m bench.prefix_memory --mb 200 --ordering``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvloop

from overnight.backends.base import Attempt, StreamAnswer
from overnight.domain.clock import SystemClock
from overnight.domain.models import ResultRow
from overnight.engine.feed import Feed, Request
from overnight.engine.prefix import CHUNK_BYTES, HASH_BYTES, HEAD_BYTES
from overnight.engine.prefix_queue import PrefixOrdering, PrefixQueue
from overnight.engine.retry import RetryPolicy
from overnight.engine.scheduler import BackendScheduler

from .procs import status_kb

LINE_BYTES = 4000
DOCS = 50
FEEDS = 4
OK = b'{"object":"chat.completion","usage":{"prompt_tokens":900,"completion_tokens":1,"total_tokens":901}}'
SYSTEM = "You are a careful analyst. Answer from the excerpt only. " * 3


@dataclass
class _Held:
    bytes: int = 0
    requests: int = 0
    largest_entry: int = 0
    queues: set[int] = field(default_factory=set)


HELD = _Held()


def _watch_appends() -> None:
    """Look at every buffer after each line it takes (this process only: a measurement hook)."""
    original = PrefixQueue.append

    def append(self: PrefixQueue, request: Request) -> None:
        original(self, request)
        HELD.bytes = max(HELD.bytes, self.held_bytes)
        HELD.requests = max(HELD.requests, len(self))
        HELD.largest_entry = max(
            HELD.largest_entry, len(request.body) + HEAD_BYTES // CHUNK_BYTES * HASH_BYTES
        )
        HELD.queues.add(id(self))

    PrefixQueue.append = append  # type: ignore[method-assign]


@dataclass
class _InstantBackend:
    max_concurrency: int = 64
    name: str = "instant"

    def serves(self, model: str) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        await asyncio.sleep(0)
        return Attempt(200, OK, "r")

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)


def _documents() -> list[str]:
    words = ("market", "river", "engine", "signal", "harvest", "ledger", "orbit", "canvas", "lantern")
    rng = random.Random(7)
    return [f"Excerpt {doc}: " + " ".join(rng.choices(words, k=LINE_BYTES // 6)) for doc in range(DOCS)]


async def _lines(first: int, count: int, documents: list[str]) -> AsyncIterator[tuple[int, bytes]]:
    rng = random.Random(first)
    room = LINE_BYTES - len(SYSTEM) - 200
    for number in range(first, first + count):
        excerpt = documents[rng.randrange(DOCS)][:room]
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{excerpt}\nQuestion {number}: what does it say?"},
        ]
        body = {"model": "m", "messages": messages}
        line = {
            "custom_id": f"request-{number}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body,
        }
        yield number, json.dumps(line).encode()
        if number % 64 == 0:
            await asyncio.sleep(0)  # a blob read's await, now and then


async def _run(mb: int, ordering: bool) -> dict[str, object]:
    if ordering:
        _watch_appends()
    settings = PrefixOrdering() if ordering else None
    retry = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    scheduler = BackendScheduler(_InstantBackend(), SystemClock(), retry=retry, prefix=settings)
    total = mb * 1_000_000 // LINE_BYTES
    per_feed = total // FEEDS
    documents = _documents()
    answered = 0

    def sink(row: ResultRow) -> None:
        nonlocal answered
        answered += 1

    feeds = [
        Feed(
            f"batch_{n}",
            "p",
            10**9,
            "/v1/chat/completions",
            _lines(n * per_feed + 1, per_feed, documents),
            str,
            sink,
        )
        for n in range(FEEDS)
    ]
    started = time.perf_counter()
    await asyncio.gather(*(scheduler.run(feed) for feed in feeds))
    seconds = time.perf_counter() - started
    await scheduler.close()
    bound = settings or PrefixOrdering()
    return {
        "ordering": ordering,
        "input_mb": per_feed * FEEDS * LINE_BYTES / 1e6,
        "lines": per_feed * FEEDS,
        "answered": answered,
        "line_bytes": LINE_BYTES,
        "feeds": FEEDS,
        "seconds": seconds,
        "peak_rss_mb": (status_kb_self() or 0) / 1024,
        "max_held_bytes": HELD.bytes,
        "max_held_requests": HELD.requests,
        "largest_entry": HELD.largest_entry,
        "buffers": len(HELD.queues),
        "bound_bytes": bound.max_bytes,
        "lookahead": bound.lookahead,
    }


def status_kb_self() -> int | None:
    return status_kb(os.getpid(), "VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prefix_memory", description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--ordering", action="store_true")
    args = parser.parse_args()
    print(json.dumps(uvloop.run(_run(args.mb, args.ordering))))


if __name__ == "__main__":
    main()
