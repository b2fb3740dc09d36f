"""A model server that queues instead of refusing, as vLLM does, run in the test's own event loop on a
loopback port: `slots` requests served at once, `service_s` each, a FIFO queue beyond them, never a 429.

It answers `POST /v1/chat/completions` with a small completion, shows vLLM's `/metrics` names
(`vllm:num_requests_waiting`, `vllm:num_requests_running`), and records what the tests look at: the
longest its queue grew and the `priority` field of every request (None when absent).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from types import TracebackType
from typing import Any

from aiohttp import web


class QueueingUpstream:
    def __init__(self, slots: int, service_s: float) -> None:
        self.slots = asyncio.Semaphore(slots)
        self.service_s = service_s
        self.waiting = 0
        self.running = 0
        self.max_waiting = 0
        self.max_at_once = 0  # the most requests it held at once, running and waiting
        self.served = 0
        self.priorities: list[Any] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.metrics_url = ""

    async def _chat(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.priorities.append(body.get("priority"))
        self.waiting += 1
        self.max_waiting = max(self.max_waiting, self.waiting)
        self.max_at_once = max(self.max_at_once, self.waiting + self.running)
        try:
            await self.slots.acquire()  # first come, first served
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            await asyncio.sleep(self.service_s)
        finally:
            self.running -= 1
            self.slots.release()
        self.served += 1
        answer = {
            "id": f"chatcmpl-q-{time.monotonic_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "m"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        return web.json_response(answer)

    async def _metrics(self, request: web.Request) -> web.Response:
        text = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="m"}} {float(self.running)}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="m"}} {float(self.waiting)}\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def __aenter__(self) -> QueueingUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock, backlog=1024)
        await site.start()
        port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
