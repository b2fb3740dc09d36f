"""A simulated model server with a prefix cache of limited size, as vLLM's automatic prefix caching and
SGLang's RadixAttention behave, for the `prefix` bench.

`slots` requests are served in parallel; any more wait in one FIFO queue. A request's prompt (its messages'
roles and contents, in order) is cut into blocks of BLOCK_CHARS characters (16 tokens of about 4
characters, vLLM's block size); each block is named by a hash of everything up to its end, so a block is
shared only by prompts that agree up to there. The cache holds `cache_blocks` blocks, least recently used
out first. A request costs `hit_ms` (the decode, and the prompt's cached part, which is skipped) plus
(`miss_ms` - `hit_ms`) x the share of its prompt's blocks not found in the cache from the start: prompt
processing. Its blocks enter the cache once its prompt processing is over, as they do in vLLM.

`GET /_stats`: requests served, prompt blocks looked up and found in the cache.

As a subprocess: ``python -m bench.prefix_upstream --port 0 --slots 8 --cache-blocks 264`` prints
``READY <base_url>`` once listening and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import uvloop
from aiohttp import web

from .sim_process import SimProcess, chat_answer, serve_until_signalled

BLOCK_CHARS = 64


@dataclass
class _State:
    slots: asyncio.Semaphore
    cache_blocks: int
    hit_s: float
    miss_s: float
    cache: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    served: int = 0
    blocks_looked_up: int = 0
    blocks_found: int = 0


_STATE = web.AppKey("state", _State)


def prompt_of(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return "".join(f"{m.get('role', '')}:{m.get('content', '')}\n" for m in messages)


def blocks_of(prompt: str) -> list[bytes]:
    """The hash of each whole block, chained: a block's name says everything before it too."""
    names, running = [], hashlib.blake2b(digest_size=16)
    for end in range(BLOCK_CHARS, len(prompt) + 1, BLOCK_CHARS):
        running.update(prompt[end - BLOCK_CHARS : end].encode())
        names.append(running.copy().digest())
    return names


def cached_share(state: _State, blocks: list[bytes]) -> float:
    """The share of the prompt's blocks found in the cache from its start (each found one is touched)."""
    found = 0
    for name in blocks:
        if name not in state.cache:
            break
        state.cache.move_to_end(name)
        found += 1
    state.blocks_looked_up += len(blocks)
    state.blocks_found += found
    return found / len(blocks) if blocks else 0.0


def remember(state: _State, blocks: list[bytes]) -> None:
    for name in blocks:
        state.cache[name] = None
        state.cache.move_to_end(name)
    while len(state.cache) > state.cache_blocks:
        state.cache.popitem(last=False)


async def _chat(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await request.json()
    prompt = prompt_of(body)
    blocks = blocks_of(prompt)
    async with state.slots:  # asyncio.Semaphore wakes its waiters first come, first served
        uncached = 1.0 - cached_share(state, blocks)
        await asyncio.sleep((state.miss_s - state.hit_s) * uncached)  # prompt processing
        remember(state, blocks)
        await asyncio.sleep(state.hit_s)  # the decode
    state.served += 1
    return web.json_response(chat_answer(body, len(prompt) // 4))


async def _stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response(
        {
            "served": state.served,
            "blocks_looked_up": state.blocks_looked_up,
            "blocks_found": state.blocks_found,
            "cached_blocks": len(state.cache),
        }
    )


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(slots: int, cache_blocks: int, hit_ms: float, miss_ms: float) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[_STATE] = _State(asyncio.Semaphore(slots), cache_blocks, hit_ms / 1000, miss_ms / 1000)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/_stats", _stats)
    app.router.add_get("/health", _health)
    return app


class PrefixUpstream(SimProcess):
    """This module as a subprocess."""

    def __init__(self, slots: int, cache_blocks: int, hit_ms: float, miss_ms: float) -> None:
        arguments = ["--slots", str(slots), "--cache-blocks", str(cache_blocks)]
        super().__init__(
            "bench.prefix_upstream", [*arguments, "--hit-ms", str(hit_ms), "--miss-ms", str(miss_ms)]
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prefix_upstream", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--cache-blocks", type=int, default=264)
    parser.add_argument("--hit-ms", type=float, default=10.0)
    parser.add_argument("--miss-ms", type=float, default=60.0)
    args = parser.parse_args()
    app = build_app(args.slots, args.cache_blocks, args.hit_ms, args.miss_ms)
    uvloop.run(serve_until_signalled(app, args.port))


if __name__ == "__main__":
    main()
