"""One HTTP/1.1 client connection: an asyncio Protocol that sends a prepared request and reads the
answer with httptools (llhttp, the C parser of Node.js and uvicorn).

A connection carries one exchange at a time. The pool (`overnight.backends.wire`) hands it a request
already encoded as bytes and a deadline; `exchange` writes it in one `transport.write` and returns a
future that the protocol callbacks complete with a `Response`, or fail with:

* `TimeoutError` when the deadline passes (the connection is then aborted);
* `StaleConnection` when a connection that already carried an exchange is closed by the server
  (a clean EOF) before any byte of the answer: the server closed it as idle, so sending the request
  again on a new connection is safe;
* `ConnectionError` (or the transport's own `OSError`) for every other way of getting no complete
  answer: a reset, an EOF in the middle of an answer, an answer that is not valid HTTP.

Bodies may be delimited by Content-Length, chunked, or (no length given) by the end of the connection.
Interim 1xx answers are skipped. After a complete answer the connection goes back to the pool when
the server lets it stay open (HTTP/1.1 without `Connection: close`), and is closed otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import cast

import httptools


class Response:
    """An HTTP answer: status, headers (lower-case names; the first of repeated ones), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class StaleConnection(ConnectionError):
    """A kept-alive connection was closed by the server before any byte of the answer."""


class Connection(asyncio.Protocol):
    """See the module docstring. `release` gets the connection back once an answer is complete and it
    may be reused; `forget` is called exactly once, when it closes (by either side)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        release: Callable[[Connection], None],
        forget: Callable[[Connection], None],
    ) -> None:
        self._loop = loop
        self._release = release
        self._forget = forget
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._answered = False  # a byte of the current answer has arrived
        self._until_close = False  # the current answer's body ends with the connection
        self._headers_done = False
        self.exchanges = 0  # completed exchanges
        self.idle_since = 0.0
        self.closed = False

    @property
    def usable(self) -> bool:
        """Open, with no EOF seen: it may take a new exchange."""
        transport = self._transport
        return not self.closed and transport is not None and not transport.is_closing()

    def exchange(self, payload: bytes, deadline: float) -> asyncio.Future[Response]:
        """Send `payload` (a whole request) and return the future of its answer."""
        transport = self._transport
        if transport is None or self.closed:
            raise ConnectionError("the connection is closed")
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._waiter = waiter
        self._answered = self._headers_done = self._until_close = False
        self._headers = {}
        self._body = []
        self._timer = self._loop.call_at(deadline, self._on_timeout)
        transport.write(payload)
        return waiter

    def abandon(self, waiter: asyncio.Future[Response]) -> None:
        """The caller stopped waiting for `waiter` (cancelled): the answer's bytes are unwanted."""
        if self._waiter is waiter:
            self._waiter = None
            self.abort()

    def close(self) -> None:
        """Close gracefully (pending writes are flushed)."""
        if self._closing():
            assert self._transport is not None
            self._transport.close()

    def abort(self) -> None:
        """Close at once."""
        if self._closing():
            assert self._transport is not None
            self._transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing was asked: a server must not speak first
            self.close()
            return
        self._answered = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(ConnectionError(f"the upstream's answer is not valid HTTP/1.1: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        closed_here = self.closed
        self.closed = True
        if self._waiter is not None:
            if exc is None and self._headers_done and self._until_close:
                self._complete(self._parser.get_status_code(), keep_alive=False)
            else:
                self._fail(self._lost(exc))
        if not closed_here:
            self._forget(self)

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        if key not in self._headers:
            self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        headers = self._headers
        self._until_close = "content-length" not in headers and "transfer-encoding" not in headers

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is None:  # bytes after the answer: the connection is not reusable
            self.abort()
            return
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            self._headers = {}
            self._body = []
            self._headers_done = self._until_close = False
            return
        self._complete(status, self._parser.should_keep_alive())

    # -- internals ---------------------------------------------------------------------------------

    def _complete(self, status: int, keep_alive: bool) -> None:
        waiter = self._waiter
        assert waiter is not None
        self._waiter = None
        self._stop_timer()
        self.exchanges += 1
        response = Response(status, self._headers, b"".join(self._body))
        self._body = []
        if waiter.done():  # abandoned
            self.abort()
            return
        if keep_alive and not self.closed:
            self._release(self)
        else:
            self.close()
        waiter.set_result(response)

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self._waiter = None
        self._stop_timer()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _lost(self, exc: Exception | None) -> BaseException:
        if self._answered:
            error = ConnectionError(self._cut_off(exc))
            error.__cause__ = exc
            return error
        if exc is None:
            if self.exchanges:
                return StaleConnection("the server closed the kept-alive connection before answering")
            return ConnectionError("the server closed the connection without answering")
        return exc if isinstance(exc, OSError) else ConnectionError(str(exc) or type(exc).__name__)

    def _cut_off(self, exc: Exception | None) -> str:
        """An answer that began and never ended, in words: reset or closed, and how much came."""
        how = "was reset" if isinstance(exc, ConnectionResetError) else "closed"
        text = f"the connection {how} in the middle of the answer"
        expected = self._headers.get("content-length")
        if self._headers_done and expected is not None:
            status = self._parser.get_status_code()
            received = sum(len(piece) for piece in self._body)
            text += f" (HTTP {status}, {received} of {expected} bytes of the body came)"
        return text

    def _on_timeout(self) -> None:
        self._timer = None
        self._fail(TimeoutError("no answer before the deadline"))
        self.abort()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _closing(self) -> bool:
        """Mark closed; True the first time (the caller then closes the transport)."""
        if self.closed or self._transport is None:
            return False
        self.closed = True
        self._fail(ConnectionError("the connection was closed"))
        self._forget(self)
        return True
