"""Http1Client (overnight.backends.wire) against real loopback servers, under asyncio and uvloop.

Each server is a few lines of raw HTTP written by hand, so the edge cases are exact: chunked bodies,
`Connection: close`, servers that close kept-alive connections, resets, answers dribbled a byte at a
time, 1 MB bodies, 204/304/1xx, bodies ending with the connection, the pool limit, timeouts,
cancellation, idle expiry and TLS with a self-signed certificate (made with the openssl command).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from overnight.backends.wire import Http1Client, NotConnected
from support.raw_http import (
    HEADERS,
    Peer,
    Server,
    answer,
    answer_all,
    eventually,
    post,
    self_signed_certificate,
)

Run = Callable[[Coroutine[Any, Any, None]], None]
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Runs a test's coroutine to the end on a new loop of the parameter's kind."""
    factory = LOOPS[request.param]

    def run_(scenario: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(scenario, 30))

    return run_


def test_prepared_request_and_kept_alive_connection(run: Run) -> None:
    async def scenario() -> None:
        async with Server(answer_all) as server:
            client = server.client(headers={**HEADERS, "Authorization": "Bearer k"})
            head = client.prepare("POST", "/v1/chat/completions")
            assert head == (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json"
                b"\r\nAccept: application/json\r\nAuthorization: Bearer k\r\nContent-Length: " % server.port
            )
            first = await client.request(head, b'{"a":1}', 10.0)
            second = await client.request(head, b"{}", 10.0)
            await client.close()
        assert (first.status, first.body, second.body) == (200, b'{"n":1}', b'{"n":2}')
        assert first.headers["x-request-id"] == "r1"
        assert first.headers["content-type"] == "application/json"
        assert server.connections == 1
        line, headers, body = server.requests[0]
        assert (line, body, headers["content-length"]) == (
            "POST /v1/chat/completions HTTP/1.1",
            b'{"a":1}',
            "7",
        )
        assert "accept-encoding" not in headers

    run(scenario())


def test_chunked_answer(run: Run) -> None:
    async def chunked(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await peer.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def scenario() -> None:
        async with Server(chunked) as server:
            client = server.client()
            assert await post(client) == (200, b"hello world")
            assert await post(client) == (200, b"hello world")
            await client.close()
        assert server.connections == 1

    run(scenario())


def test_answer_in_tiny_writes(run: Run) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nX-Request-ID: tiny\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"

    async def dribble(peer: Peer) -> None:
        peer.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for data in (chunked, answer(b'{"second":true}')):
            await peer.read_request()
            for i in range(len(data)):  # one byte a segment
                await peer.send(data[i : i + 1])
                await asyncio.sleep(0.0005)
        await peer.wait_closed_by_client()

    async def scenario() -> None:
        async with Server(dribble) as server:
            client = server.client()
            first = await client.request(client.prepare("POST", "/x"), b"{}", 10.0)
            assert (first.status, first.body, first.headers["x-request-id"]) == (200, b"abcdefg", "tiny")
            assert await post(client) == (200, b'{"second":true}')
            await client.close()
        assert server.connections == 1

    run(scenario())


def test_one_megabyte_bodies(run: Run) -> None:
    async def echo(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.send(answer(request[2]))

    async def scenario() -> None:
        big = b'{"x":"' + b"y" * 1_000_000 + b'"}'
        async with Server(echo) as server:
            client = server.client()
            assert await post(client, big) == (200, big)
            await client.close()

    run(scenario())


def test_answers_without_a_body_and_interim_answers(run: Run) -> None:
    async def bodiless(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 204 No Content\r\nX-Request-ID: a\r\n\r\n")
        await peer.read_request()
        await peer.send(b"HTTP/1.1 304 Not Modified\r\n\r\n")
        await peer.read_request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        await peer.send(answer(b"{}"))
        await peer.wait_closed_by_client()

    async def scenario() -> None:
        async with Server(bodiless) as server:
            client = server.client()
            assert [await post(client) for _ in range(3)] == [(204, b""), (304, b""), (200, b"{}")]
            await client.close()
        assert server.connections == 1

    run(scenario())


def test_connection_close_and_bodies_that_end_with_the_connection(run: Run) -> None:
    async def closing(peer: Peer) -> None:
        request = await peer.read_request()
        assert request is not None
        if len(peer.server.requests) == 1:
            await peer.send(answer(b'{"a":1}', "200 OK", "Connection: close"))
        else:  # no Content-Length: the body is all that comes before the end
            await peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"b":2}')

    async def scenario() -> None:
        async with Server(closing) as server:
            client = server.client()
            assert await post(client) == (200, b'{"a":1}')
            assert await post(client) == (200, b'{"b":2}')
            await eventually(lambda: client.open_connections == 0)
            await client.close()
        assert server.connections == 2

    run(scenario())


def test_idle_connection_closed_by_the_server_is_not_used(run: Run) -> None:
    async def one_each(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer())

    async def scenario() -> None:
        async with Server(one_each) as server:
            client = server.client()
            assert (await post(client))[0] == 200
            await eventually(lambda: client.open_connections == 0)  # the EOF was seen
            assert (await post(client))[0] == 200
            await client.close()
        assert (server.connections, len(server.requests)) == (2, 2)

    run(scenario())


def test_kept_alive_connection_closed_as_the_request_is_sent_is_retried_once(run: Run) -> None:
    async def closes_when_reused(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer())
        await peer.read_request()  # read, then close without a byte: as a server's idle close racing us

    async def scenario() -> None:
        async with Server(closes_when_reused) as server:
            client = server.client()
            assert (await post(client))[0] == 200
            assert (await post(client))[0] == 200  # transparently, on a second connection
            await client.close()
        assert (server.connections, len(server.requests)) == (2, 3)

    run(scenario())


def test_the_transparent_retry_happens_once_only(run: Run) -> None:
    async def answers_once(peer: Peer) -> None:
        await peer.read_request()
        if len(peer.server.requests) == 1:
            await peer.send(answer())
            await peer.read_request()

    async def scenario() -> None:
        async with Server(answers_once) as server:
            client = server.client()
            assert (await post(client))[0] == 200
            with pytest.raises(ConnectionError, match="without answering"):
                await post(client)
            await client.close()
        assert len(server.requests) == 3

    run(scenario())


@pytest.mark.parametrize("partial", [b"", b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"half'])
@pytest.mark.parametrize("how", ["reset", "close"])
def test_no_retry_once_the_answer_began_or_on_reset(run: Run, partial: bytes, how: str) -> None:
    async def breaks_when_reused(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(answer())
        if await peer.read_request() is None:
            return
        await peer.send(partial)
        peer.reset() if how == "reset" else peer.writer.close()

    async def scenario() -> None:
        retried = how == "close" and not partial  # only a clean close before any byte is retried
        async with Server(breaks_when_reused) as server:
            client = server.client()
            assert (await post(client))[0] == 200
            if retried:  # and the new connection's first request is answered
                assert (await post(client))[0] == 200
            else:
                error = ConnectionError if partial else ConnectionResetError
                with pytest.raises(error, match="middle of the answer" if partial else None):
                    await post(client)
            await client.close()
        assert len(server.requests) == (3 if retried else 2)

    run(scenario())


def test_invalid_answer_is_a_connection_error(run: Run) -> None:
    async def garbage(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/9 nonsense\r\n\r\n")

    async def scenario() -> None:
        async with Server(garbage) as server:
            client = server.client()
            with pytest.raises(ConnectionError, match="not valid HTTP"):
                await post(client)
            await client.close()

    run(scenario())


def test_connection_refused(run: Run) -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        client = Http1Client(f"http://127.0.0.1:{port}", limit=1, headers={})
        with pytest.raises(NotConnected) as raised:
            await post(client)
        assert isinstance(raised.value.__cause__, ConnectionRefusedError)
        assert "refused the connection" in str(raised.value)
        await client.close()

    run(scenario())


def test_pool_limit_under_concurrency(run: Run) -> None:
    async def slow(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await asyncio.sleep(0.005)
            await peer.send(answer())

    async def scenario() -> None:
        async with Server(slow) as server:
            client = server.client(limit=4)
            answers = await asyncio.gather(*(post(client) for _ in range(60)))
            await client.close()
        assert all(status == 200 for status, _ in answers)
        assert server.max_open <= 4
        assert server.connections == 4

    run(scenario())


def test_timeout_closes_the_connection(run: Run) -> None:
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_closed_by_client()

    async def scenario() -> None:
        async with Server(silent) as server:
            client = server.client()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await post(client, timeout_s=0.2)
            assert time.monotonic() - started < 2.0
            await eventually(lambda: server.closed_by_client == 1)
            assert client.open_connections == 0
            await client.close()

    run(scenario())


def test_waiting_for_a_connection_counts_and_cancelling_frees_it(run: Run) -> None:
    async def silent(peer: Peer) -> None:
        await peer.read_request()
        await peer.wait_closed_by_client()

    async def scenario() -> None:
        async with Server(silent) as server:
            client = server.client(limit=1)
            hanging = asyncio.create_task(post(client, timeout_s=20))
            await eventually(lambda: len(server.requests) == 1)
            with pytest.raises(TimeoutError):
                await post(client, timeout_s=0.1)  # no connection free within the timeout
            hanging.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hanging
            await eventually(lambda: server.closed_by_client == 1 and client.open_connections == 0)
            await client.close()
        assert server.connections == 1

    run(scenario())


def test_idle_connections_expire(run: Run) -> None:
    async def scenario() -> None:
        async with Server(answer_all) as server:
            client = server.client(keepalive_s=0.05)
            assert (await post(client))[0] == 200
            assert client.open_connections == 1
            await eventually(lambda: client.open_connections == 0)
            assert (await post(client))[0] == 200
            await client.close()
        assert server.connections == 2

    run(scenario())


async def test_header_text_is_checked_and_never_shown() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        Http1Client("http://h:1", limit=1, headers={"Authorization": "Bearer a\r\nX: y"})
    client = Http1Client("http://h:1", limit=1, headers={"Authorization": "Bearer sk-secret"})
    assert "sk-secret" not in repr(client)
    with pytest.raises(ValueError, match="not an http"):
        Http1Client("ftp://h:1", limit=1, headers={})


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no self-signed certificate for the TLS test")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_tls(run: Run, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def scenario() -> None:
        async with Server(answer_all, server_context) as server:
            client = server.client(ssl_context=ssl.create_default_context(cafile=str(cert)))
            assert await post(client) == (200, b'{"n":1}')
            assert await post(client) == (200, b'{"n":2}')
            await client.close()
            untrusting = server.client()  # the system's CAs: the self-signed certificate fails
            with pytest.raises(NotConnected) as raised:
                await post(untrusting)
            assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)
            await untrusting.close()
        assert server.connections == 1  # the failed handshake never reached the handler

    run(scenario())
