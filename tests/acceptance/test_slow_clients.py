"""Slow-loris clients against the real server on loopback, with raw sockets (docs/limits.md): headers
that trickle, a body that trickles, a connection that sends nothing and an idle kept-alive one are each
disconnected after their timeout, while the server goes on serving everyone else."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from acceptance.conftest import write_config
from support.server import FakeUpstreamProcess, OvernightServer

HEADER_TIMEOUT_S = 1.0
IDLE_TIMEOUT_S = 1.0
KEEPALIVE_S = 1.0
GIVE_UP_S = 60.0  # far past every timeout: a connection still open then was never closed


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("slow")
    config = write_config(
        root / "overnight.toml",
        upstream.base_url,
        client_header_timeout_s=HEADER_TIMEOUT_S,
        client_idle_timeout_s=IDLE_TIMEOUT_S,
        keepalive_timeout_s=KEEPALIVE_S,
    )
    srv = OvernightServer(root / "data", config)
    srv.start()
    yield srv
    srv.stop()


class Peer:
    """A raw client connection; `received` is everything the server has sent it."""

    def __init__(self, server: OvernightServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=GIVE_UP_S)
        self.sock.settimeout(0.2)
        self.received = b""

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False when the server has closed the connection."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def closed(self) -> bool:
        """Whether the server has closed the connection, reading what it sent until then."""
        try:
            while data := self.sock.recv(65536):
                self.received += data
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        return True

    def trickle_until_closed(self, data: bytes, every_s: float) -> bool:
        """Send `data` a byte at a time, `every_s` apart, until the server closes (True) or it is all sent."""
        deadline = time.monotonic() + GIVE_UP_S
        for byte in data:
            if self.closed():  # read what the server said before sending into a closed connection
                return True
            if time.monotonic() > deadline or not self.send(bytes([byte])):
                break
            time.sleep(every_s)  # the client's pace, not a synchronization
        return self.closed()

    def wait_closed(self) -> bool:
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            if self.closed():
                return True
        return False


def _healthy(server: OvernightServer) -> bool:
    root = server.base_url.removesuffix("/v1")
    return httpx2.get(f"{root}/health", timeout=10).status_code == 200


def test_headers_that_trickle_are_cut_off(server: OvernightServer) -> None:
    request = b"GET /v1/files HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000 + b"\r\n\r\n"
    with Peer(server) as peer:
        assert peer.trickle_until_closed(request, every_s=0.1)
        assert peer.received == b""  # closed without an answer: there was no request to answer


def test_a_connection_that_sends_nothing_is_closed(server: OvernightServer) -> None:
    with Peer(server) as peer:
        assert peer.wait_closed()


def test_an_upload_body_that_stalls_gets_a_408_and_is_closed(server: OvernightServer) -> None:
    boundary = "slowboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
    ).encode()
    headers = (
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    with Peer(server) as peer:
        assert peer.send(headers + head + b'{"custom_id": "a"')
        assert peer.trickle_until_closed(b"x" * 1000, every_s=IDLE_TIMEOUT_S * 3)
        assert peer.received.startswith(b"HTTP/1.1 408")
        assert b'"code":"request_timeout"' in peer.received.replace(b" ", b"")


def test_a_kept_alive_connection_left_idle_is_closed(server: OvernightServer) -> None:
    with Peer(server) as peer:
        assert peer.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert peer.wait_closed()
        assert peer.received.startswith(b"HTTP/1.1 200")


def test_the_server_serves_others_while_slow_clients_hang_on(server: OvernightServer) -> None:
    stop = threading.Event()

    def loris() -> None:
        with Peer(server) as peer:
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\n" + b"Y" * 10_000:
                if stop.is_set() or not peer.send(bytes([byte])):
                    return
                time.sleep(0.05)

    threads = [threading.Thread(target=loris) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(20):
            assert _healthy(server)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=GIVE_UP_S)
    assert _healthy(server)
