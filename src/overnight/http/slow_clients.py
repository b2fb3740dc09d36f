"""Timeouts for slow clients (slow-loris), so that no connection is held for ever (docs/limits.md).

aiohttp closes a kept-alive connection that sends no new request for `keepalive_timeout` and has no
timeout of its own for a request's line and headers, nor for its body. Here:
- `HeaderDeadlines` closes a connection whose request line and headers are not all in within
  `client_header_timeout_s` of its first byte (or of the connection's start): each connection's protocol
  is wrapped to see bytes arrive, and `request_started_middleware`, the app's outermost, tells it when
  a request is complete enough for its handler to run;
- reads of a body wait at most `client_idle_timeout_s` for their next bytes (http/limits.py);
- `handler_args` turns off aiohttp's lingering (reading and dropping what a client still sends after
  its answer): a refused upload's connection is closed at once, so the server stops reading.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger("overnight.http")


class _Watched(asyncio.Protocol):
    """An aiohttp connection's protocol, with a deadline on each request's line and headers."""

    def __init__(self, inner: asyncio.Protocol, deadlines: HeaderDeadlines) -> None:
        self._inner = inner
        self._deadlines = deadlines
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes
        self._deadlines.watched[transport] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._timer is None:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._transport is not None:
            self._deadlines.watched.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        self._in_request = True
        self._disarm()

    def request_finished(self) -> None:
        self._in_request = False  # the next request's first byte arms the deadline again

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._deadlines.timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._in_request or self._transport is None:
            return
        peer = self._transport.get_extra_info("peername")
        log.info(
            "closed a connection from %s: no complete request headers within %g s",
            peer,
            self._deadlines.timeout_s,
        )
        self._transport.close()


class HeaderDeadlines:
    """The connections of one listening socket, each with its header deadline."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.watched: dict[asyncio.BaseTransport, _Watched] = {}

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Watched(inner(), self)

    def started(self, transport: asyncio.BaseTransport | None) -> _Watched | None:
        watched = self.watched.get(transport) if transport is not None else None
        if watched is not None:
            watched.request_started()
        return watched


DEADLINES: web.AppKey[HeaderDeadlines] = web.AppKey("header_deadlines", HeaderDeadlines)


@web.middleware
async def request_started_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: the request's headers are in, its deadline is off until it ends."""
    deadlines = request.app.get(DEADLINES)
    watched = deadlines.started(request.transport) if deadlines is not None else None
    try:
        return await handler(request)
    finally:
        if watched is not None:
            watched.request_finished()


class WatchedSockSite(web.SockSite):
    """A SockSite whose connections have header deadlines."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, deadlines: HeaderDeadlines) -> None:
        super().__init__(runner, sock)
        self._deadlines = deadlines

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._deadlines.factory(server), sock=self._sock, backlog=self._backlog
        )


def handler_args(keepalive_timeout_s: float) -> dict[str, Any]:
    """aiohttp's per-connection settings: its keep-alive timeout, and no lingering."""
    return {"keepalive_timeout": keepalive_timeout_s, "lingering_time": 0}


def site_for(runner: web.AppRunner, sock: socket.socket) -> web.BaseSite:
    """A site on `sock`, with header deadlines where the app has them (the API's, not a probe port's)."""
    deadlines = runner.app.get(DEADLINES)
    return web.SockSite(runner, sock) if deadlines is None else WatchedSockSite(runner, sock, deadlines)
