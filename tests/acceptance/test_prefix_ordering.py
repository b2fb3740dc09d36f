"""`prefix_ordering = true` on a real `overnight serve`: a shuffled batch of questions about a few documents
reaches a model server on loopback grouped by document, and every line is answered exactly once, also
across a `kill -9` and restart."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from support.server import OvernightServer

from .conftest import make_client, read_lines, upload, wait_for, write_config

DOCS, QUESTIONS = 6, 12
SYSTEM = "You answer questions about the document below, briefly. " * 3


def document(number: int) -> str:
    words = random.Random(number).choices(["north", "south", "east", "west", "up", "down"], k=400)
    return f"Document {number}. " + " ".join(words)


def shuffled_lines(seed: int) -> list[dict[str, Any]]:
    pairs = [(doc, question) for doc in range(DOCS) for question in range(QUESTIONS)]
    random.Random(seed).shuffle(pairs)
    return [
        {
            "custom_id": f"d{doc}-q{question}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "fake-chat",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {
                        "role": "user",
                        "content": f"{document(doc)}\n\nQuestion {question} (d{doc}-q{question})?",
                    },
                ],
            },
        }
        for doc, question in pairs
    ]


def switches(docs: list[str]) -> int:
    return sum(1 for before, after in itertools.pairwise(docs) if before != after)


class RecordingUpstream:
    """A chat model server in a thread of its own: it records which line each request was, in the order
    they arrive, and holds every request after the first `answer_first` until `release()` when asked to."""

    def __init__(self) -> None:
        self.arrivals: list[str] = []
        self.answer_first: int | None = None
        self._loop = asyncio.new_event_loop()
        self._released = asyncio.Event()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the recording upstream did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        line = body["messages"][-1]["content"].rsplit("(", 1)[1].rstrip(")?")
        self.arrivals.append(line)
        if self.answer_first is not None and len(self.arrivals) > self.answer_first:
            await self._released.wait()
        answer = {
            "id": f"chatcmpl-{len(self.arrivals)}",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": line}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }
        return web.json_response(answer)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._released.set)

    def stop(self) -> None:
        self.release()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture
def recording() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    yield upstream
    upstream.stop()


def server_for(tmp_path: Path, upstream: RecordingUpstream, *, ordering: bool) -> OvernightServer:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    with config.open("a") as out:  # the [[backends]] table is the file's last
        out.write(f"prefix_ordering = {json.dumps(ordering)}\n")
    return OvernightServer(tmp_path / "data", config)


def completed(batch: Any) -> int:
    return 0 if batch.request_counts is None else int(batch.request_counts.completed)


def answered_once(client: Any, batch: Any, lines: list[dict[str, Any]]) -> None:
    output = read_lines(client, batch.output_file_id)
    assert Counter(row["custom_id"] for row in output) == Counter(line["custom_id"] for line in lines)
    for row in output:  # each line's own answer
        assert row["response"]["body"]["choices"][0]["message"]["content"] == row["custom_id"]


def test_a_shuffled_batch_reaches_the_upstream_grouped_by_document(
    tmp_path: Path, recording: RecordingUpstream
) -> None:
    lines = shuffled_lines(seed=7)
    in_input = switches([line["custom_id"].split("-")[0] for line in lines])
    server = server_for(tmp_path, recording, ordering=True)
    try:
        server.start()
        client = make_client(server.base_url)
        batch = client.batches.create(
            input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        answered_once(client, done, lines)
    finally:
        server.stop()
    assert sorted(recording.arrivals) == sorted(line["custom_id"] for line in lines)  # each sent once
    arrived = switches([line.split("-")[0] for line in recording.arrivals])
    assert in_input > 5 * DOCS  # the input is well shuffled
    assert arrived <= 2 * DOCS  # each document's questions together (a few cross at the seams)


def test_exactly_once_across_a_kill_and_restart_with_ordering_on(
    tmp_path: Path, recording: RecordingUpstream
) -> None:
    lines = shuffled_lines(seed=11)
    recording.answer_first = 30  # then hold: the server dies with requests in flight
    server = server_for(tmp_path, recording, ordering=True)
    try:
        server.start()
        client = make_client(server.base_url)
        batch = client.batches.create(
            input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        seen = wait_for(client, batch.id, lambda b: completed(b) >= 30)
        assert seen.status == "in_progress"
        server.kill()
        before = len(recording.arrivals)
        recording.release()
        server.start()
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        assert completed(done) == len(lines)
        answered_once(client, done, lines)
    finally:
        server.stop()
    sent = Counter(recording.arrivals)
    assert set(sent) == {line["custom_id"] for line in lines}
    extra = sum(sent.values()) - len(lines)
    assert 0 <= extra <= before - 30  # only the requests in flight at the kill ran again
