"""The simulated upstreams' common parts: serving an aiohttp app until signalled, as a subprocess that
prints ``READY <base_url>``, and the handle the bench holds on such a subprocess."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Self

from aiohttp import web

from support.server import http_json, stop_process

from .procs import REPO


def chat_answer(body: dict[str, Any], prompt_tokens: int) -> dict[str, Any]:
    """A one-token chat completion for `body`, counting `prompt_tokens` in its usage."""
    return {
        "id": f"chatcmpl-sim-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "sim-chat"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }


async def serve_until_signalled(app: web.Application, port: int) -> None:
    """Serve `app` on 127.0.0.1:`port` (0: any), print READY and its /v1 URL, stop on SIGTERM/SIGINT."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    await web.SockSite(runner, sock, backlog=1024).start()
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


class SimProcess:
    """`python -m <module> --port 0 <arguments>` (its own CPU, like the other benches' upstreams), its
    base URL (ending in /v1) once ready, and its `GET /_stats`."""

    def __init__(self, module: str, arguments: list[str]) -> None:
        command = [sys.executable, "-m", module, "--port", "0", *arguments]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{module} failed to start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        self.root = self.base_url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", f"{self.root}/_stats", timeout=30.0)
        return result

    def stop(self) -> None:
        stop_process(self.process, timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
