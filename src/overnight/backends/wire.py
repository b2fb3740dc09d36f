"""A lean HTTP/1.1 client for the backend's hot path: a keep-alive pool of asyncio connections to one
origin (scheme, host, port), with requests whose constant header block is encoded once.

Why not aiohttp here: a batch sends the same kind of POST tens of thousands of times to one server,
and aiohttp's per-request machinery (request/response objects, payload wrappers, header merging,
cookie, proxy, auth and trace hooks) costs several times the socket work. This client does only what
that POST needs: no proxies, redirects, cookies, compression (no Accept-Encoding is sent) or HTTP/2.

* `prepare(method, path)` encodes the request line and the fixed headers once; `request` appends
  Content-Length and the body and writes them with one `transport.write`.
* At most `limit` connections; idle ones are reused last-in first-out (the warmest first) and closed
  after `keepalive_s` idle (below the 5 s of uvicorn and most Python servers) or when the server
  closes them.
* A request on a reused connection that the server closes before any byte of the answer (it had
  closed the connection as idle) is sent again once, on a new connection. A reset, or an answer cut
  off after it began, is not retried here: that is the caller's retry policy's call.
* `timeout_s` bounds the whole request (waiting for a connection, connecting, the exchange);
  connecting alone is also bounded by `connect_timeout_s`. A timed-out connection is closed.
* Errors: `TimeoutError`, or an `OSError` (`ConnectionError`, `ssl.SSLError`, DNS errors) when no
  complete answer came; `NotConnected` (a `ConnectionError`) when no connection could be made at
  all, so the request never left. Any complete answer, whatever its status, is a `Response`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from overnight.backends.base import describe_exception
from overnight.backends.wire_conn import Connection, Response, StaleConnection

__all__ = ["Http1Client", "NotConnected", "Response"]

_CRLF = b"\r\n"


class NotConnected(ConnectionError):
    """No connection to the server could be made (refused, unreachable, DNS, connect timeout)."""


class Http1Client:
    """See the module docstring. Create and use it inside one running event loop."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        headers: Mapping[str, str],
        keepalive_s: float = 4.0,
        connect_timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._authority = _authority(parts.netloc, parts.hostname, parts.port)
        self._headers = dict(headers)
        for text in (self._authority, *self._headers, *self._headers.values()):
            _check_header_text(text)
        self._limit = max(1, limit)
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._ssl_context = ssl_context
        self._loop = asyncio.get_running_loop()
        self._idle: list[Connection] = []  # a stack: the most recently used last
        self._all: set[Connection] = set()
        self._opening = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:  # headers (the API key) are never shown
        return f"Http1Client({self._host!r}, port={self._port}, tls={self._tls})"

    def prepare(self, method: str, path: str) -> bytes:
        """The constant part of a request to `path` (already %-encoded, with its query), up to and
        including `Content-Length: `. Not for HEAD (its answer's Content-Length has no body)."""
        _check_header_text(method + path)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._authority}"]
        lines.extend(f"{name}: {value}" for name, value in self._headers.items())
        lines.append("Content-Length: ")
        return "\r\n".join(lines).encode("latin-1")

    async def request(self, head: bytes, body: bytes, timeout_s: float) -> Response:
        """Send `head` (from `prepare`) with `body`; the answer, or TimeoutError / OSError."""
        deadline = self._loop.time() + timeout_s
        payload = b"".join((head, str(len(body)).encode(), _CRLF, _CRLF, body))
        conn = self._take_idle()
        if conn is None:
            conn = await self._connection(deadline, fresh=False)
        waiter = conn.exchange(payload, deadline)  # `_exchange`, inlined on the hot path
        try:
            return await waiter
        except StaleConnection:
            pass  # the server closed it as idle as we sent: once more on a new connection
        except asyncio.CancelledError:
            conn.abandon(waiter)
            raise
        return await self._exchange(await self._connection(deadline, fresh=True), payload, deadline)

    async def close(self) -> None:
        """Close every connection; later requests fail with ConnectionError."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("the client is closed"))
        await asyncio.sleep(0)  # lets the transports finish closing

    @property
    def open_connections(self) -> int:
        return len(self._all)

    async def _exchange(self, conn: Connection, payload: bytes, deadline: float) -> Response:
        waiter = conn.exchange(payload, deadline)
        try:
            return await waiter
        except asyncio.CancelledError:
            conn.abandon(waiter)
            raise

    # -- the pool ----------------------------------------------------------------------------------

    def _take_idle(self) -> Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn
            conn.close()
        return None

    async def _connection(self, deadline: float, *, fresh: bool) -> Connection:
        """A connection for one exchange: an idle one (unless `fresh`), else a new one as soon as the
        limit allows."""
        while True:
            if self._closed:
                raise ConnectionError("the client is closed")
            if not fresh:
                conn = self._take_idle()
                if conn is not None:
                    return conn
            elif self._idle and len(self._all) + self._opening >= self._limit:
                self._idle.pop(0).close()  # the oldest idle one makes room for a new one
            if len(self._all) + self._opening < self._limit:
                return await self._open(deadline)
            await self._wait_turn(deadline)

    async def _open(self, deadline: float) -> Connection:
        loop = self._loop
        self._opening += 1
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self._connect_timeout_s)):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._release, self._forget),
                    self._host,
                    self._port,
                    ssl=self._ssl() if self._tls else None,
                    server_hostname=self._host if self._tls else None,
                )
        except BaseException as exc:
            self._opening -= 1
            self._wake_one()
            if isinstance(exc, OSError):  # TimeoutError included
                raise NotConnected(_describe(exc)) from exc
            raise
        self._opening -= 1
        if self._closed:
            conn.abort()
            raise ConnectionError("the client is closed")
        self._all.add(conn)
        return conn

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _wait_turn(self, deadline: float) -> None:
        """Wait until a connection is released or closed (or the deadline passes: TimeoutError)."""
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_one()  # woken, but leaving: pass the turn on
            else:
                waiter.cancel()
            raise

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: Connection) -> None:
        if self._closed:
            conn.close()
            return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._waiters:
            self._wake_one()
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + self._keepalive_s, self._sweep)

    def _forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if self._waiters:
            self._wake_one()

    def _sweep(self) -> None:
        """Close the connections idle for `keepalive_s` (the oldest are first on the stack)."""
        self._sweeper = None
        idle = self._idle
        expired = self._loop.time() - self._keepalive_s
        while idle and idle[0].idle_since <= expired:
            idle.pop(0).close()
        if idle:
            self._sweeper = self._loop.call_at(idle[0].idle_since + self._keepalive_s, self._sweep)


def _describe(exc: BaseException) -> str:
    described = describe_exception(exc)
    return described if str(exc) or described != type(exc).__name__ else f"{described} (while connecting)"


def _authority(netloc: str, hostname: str, port: int | None) -> str:
    """The Host header: the URL's host[:port] as written, IDNA-encoded when not ASCII."""
    authority = netloc.rpartition("@")[2]
    if authority.isascii():
        return authority
    host = hostname.encode("idna").decode("ascii")
    return host if port is None else f"{host}:{port}"


def _check_header_text(text: str) -> None:
    if "\r" in text or "\n" in text or not text.isascii():
        raise ValueError("HTTP header text must be ASCII without line breaks")
