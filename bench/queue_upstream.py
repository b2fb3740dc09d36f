"""A simulated model server that queues instead of refusing, as vLLM, SGLang, llama.cpp and TGI do.

`slots` requests are served in parallel, each taking `service_ms` times 1 +- up to `jitter` (uniform, from a
seeded generator: requests write answers of different lengths); any more wait in one FIFO queue (no 429,
ever). It answers `POST /v1/chat/completions` with a small completion and its usage, and exposes vLLM's
`/metrics` names (`vllm:num_requests_waiting`, `vllm:num_requests_running`) for a load signal to read.
`GET /_stats` counts the requests served, split by the `X-Bench-Online` header the online client sends.

As a subprocess: ``python -m bench.queue_upstream --port 0 --slots 64 --service-ms 400 --jitter 0.5`` prints
``READY <base_url>`` once listening and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from dataclasses import dataclass
from typing import Any

import uvloop
from aiohttp import web

from .sim_process import SimProcess, chat_answer, serve_until_signalled

ONLINE_HEADER = "X-Bench-Online"


@dataclass
class _State:
    slots: asyncio.Semaphore
    service_s: float
    jitter: float
    stretches: random.Random
    waiting: int = 0
    running: int = 0
    served_online: int = 0
    served_batch: int = 0


_STATE = web.AppKey("state", _State)


def _prompt_words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))


async def _chat(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await request.json()
    state.waiting += 1
    try:
        await state.slots.acquire()  # asyncio.Semaphore wakes its waiters first come, first served
    finally:
        state.waiting -= 1
    state.running += 1
    try:
        stretch = 1 + state.jitter * (2 * state.stretches.random() - 1)
        await asyncio.sleep(state.service_s * stretch)
    finally:
        state.running -= 1
        state.slots.release()
    if request.headers.get(ONLINE_HEADER):
        state.served_online += 1
    else:
        state.served_batch += 1
    return web.json_response(chat_answer(body, _prompt_words(body)))


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="sim-chat"}} {float(state.running)}\n'
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="sim-chat"}} {float(state.waiting)}\n'
    )
    return web.Response(text=text, content_type="text/plain")


async def _stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response(
        {
            "served_online": state.served_online,
            "served_batch": state.served_batch,
            "waiting": state.waiting,
            "running": state.running,
        }
    )


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(slots: int, service_ms: float, jitter: float = 0.0) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[_STATE] = _State(asyncio.Semaphore(slots), service_ms / 1000, jitter, random.Random(slots))
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/_stats", _stats)
    app.router.add_get("/health", _health)
    return app


class QueueUpstream(SimProcess):
    """This module as a subprocess."""

    def __init__(self, slots: int, service_ms: float, jitter: float = 0.0) -> None:
        arguments = ["--slots", str(slots), "--service-ms", str(service_ms), "--jitter", str(jitter)]
        super().__init__("bench.queue_upstream", arguments)
        self.slots, self.service_ms = slots, service_ms

    @property
    def capacity_rps(self) -> float:
        return self.slots * 1000 / self.service_ms


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_upstream", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--service-ms", type=float, default=40.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    args = parser.parse_args()
    uvloop.run(serve_until_signalled(build_app(args.slots, args.service_ms, args.jitter), args.port))


if __name__ == "__main__":
    main()
