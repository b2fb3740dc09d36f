"""A webhook receiver for tests: a real aiohttp server on loopback that records every delivery and
answers as told (refuse the first N with a status, or leave the first N hanging), per path."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from openai import OpenAI
from openai.types.webhooks import (
    BatchCancelledWebhookEvent,
    BatchCompletedWebhookEvent,
    BatchExpiredWebhookEvent,
    BatchFailedWebhookEvent,
)

WAIT_TIMEOUT_S = 120.0
BatchEvent = (
    BatchCompletedWebhookEvent
    | BatchFailedWebhookEvent
    | BatchCancelledWebhookEvent
    | BatchExpiredWebhookEvent
)


@dataclass(frozen=True)
class Received:
    path: str
    body: bytes
    headers: dict[str, str]  # lower-case names
    answered: int | None  # None: left hanging

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]

    def unwrap(self, secret: str) -> BatchEvent:
        """The event, through the official SDK's `client.webhooks.unwrap` (which checks the signature)."""
        event = OpenAI(api_key="unused", webhook_secret=secret).webhooks.unwrap(self.body, self.headers)
        assert isinstance(event, BatchEvent), event
        return event


class WebhookReceiver:
    """Serves any path; the k-th request to a path (from 1) is refused with `refuse_status` while
    k <= refuse_first[path], left hanging for `hang_s` while k <= hang_first[path], else answered 200."""

    def __init__(
        self,
        *,
        refuse_first: Mapping[str, int] | None = None,
        refuse_status: int = 503,
        hang_first: Mapping[str, int] | None = None,
        hang_s: float = 30.0,
    ) -> None:
        self.refuse_first = dict(refuse_first or {})
        self.refuse_status = refuse_status
        self.hang_first = dict(hang_first or {})
        self.hang_s = hang_s
        self.received: list[Received] = []
        self._seen: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {name.lower(): value for name, value in request.headers.items()}
        path = request.path
        self._seen[path] += 1
        count = self._seen[path]
        if count <= self.hang_first.get(path, 0):
            self.received.append(Received(path, body, headers, None))
            await asyncio.sleep(self.hang_s)
            return web.Response(status=200)
        status = self.refuse_status if count <= self.refuse_first.get(path, 0) else 200
        self.received.append(Received(path, body, headers, status))
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    def received_on(self, path: str) -> list[Received]:
        """Every request to `path`, however it was answered."""
        return [r for r in list(self.received) if r.path == path]

    def delivered(self, path: str | None = None) -> list[Received]:
        """The requests answered 2xx (to `path`, if given)."""
        return [r for r in list(self.received) if r.answered == 200 and (path is None or r.path == path)]


class ReceiverThread:
    """A WebhookReceiver on its own event loop in a thread, for tests whose body is not async."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(timeout=30)
        return self.receiver

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def wait_until(
    check: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT_S, describe: Callable[[], str] = str
) -> None:
    """Poll `check` until it holds; AssertionError naming `what` (and `describe()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen after {timeout} s: {describe()}")
        time.sleep(0.05)
