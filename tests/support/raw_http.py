"""Hand-written HTTP/1.1 servers on loopback, for exact protocol edge cases in client tests.

`Server(handler)` listens on 127.0.0.1 (TLS with `ssl_context`) and runs `handler(peer)` for each
connection; the `Peer` reads requests and writes raw bytes, or resets the connection. The server counts
connections (total, open, most open at once, closed by the client) and records every request.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from overnight.backends.wire import Http1Client

Request = tuple[str, dict[str, str], bytes]  # request line, headers (lower-case names), body
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class Peer:
    """The server's side of one connection."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer

    async def read_request(self) -> Request | None:
        """The next request, or None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.server.requests.append((line, headers, body))
        return line, headers, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a TCP RST, as a crashed server does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def wait_closed_by_client(self) -> None:
        while await self.reader.read(65536):
            pass
        self.server.closed_by_client += 1


Handler = Callable[[Peer], Awaitable[None]]


class Server:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[Request] = []
        self.connections = self.open = self.max_open = self.closed_by_client = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:  # ends the handlers still reading
            writer.transport.abort()
        await eventually(lambda: self.open == 0)

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}/v1"

    def client(self, **options: Any) -> Http1Client:
        return Http1Client(self.base_url, **{"limit": 4, "headers": HEADERS, **options})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(Peer(self, reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()


def answer(body: bytes = b'{"ok":true}', status: str = "200 OK", *extra: str) -> bytes:
    fields = "".join(f"{field}\r\n" for field in extra)
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{fields}\r\n"
    )
    return head.encode() + body


async def answer_all(peer: Peer) -> None:
    while await peer.read_request() is not None:
        await peer.send(answer(b'{"n":%d}' % len(peer.server.requests), "200 OK", "X-Request-ID: r1"))


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not come true within 2 s")


async def post(client: Http1Client, body: bytes = b"{}", timeout_s: float = 10.0) -> tuple[int, bytes]:
    response = await client.request(client.prepare("POST", "/v1/chat/completions"), body, timeout_s)
    return response.status, response.body


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made with the openssl command (which must be installed)."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    command += ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([*command, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key
