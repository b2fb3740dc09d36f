"""A chat-completions upstream that misbehaves at random, with a seed: the engine's chaos tests.

A raw asyncio HTTP/1.1 server on loopback (keep-alive, Content-Length bodies), so that it can break
the protocol on purpose: reset a connection mid-body, promise more bytes than it sends, trickle a body.
Each request names its batch line with a marker in its body (``chaos:<custom_id>``, see `marker`);
what it gets is drawn from `random.Random` seeded with (seed, marker, attempt number), so a line meets
the same faults in the same order however the engine interleaves its requests.

    with ChaosUpstream(seed=7).running() as chaos:   # serves in a thread of its own
        ...  # chaos.base_url; chaos.requests_by_line, chaos.faults_by_line, chaos.injected()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import msgspec

from support.fake_bodies import REPLY, chat, error_body


class Fault(enum.Enum):
    """What one request gets."""

    NORMAL = "normal"
    RATE_LIMITED_RETRY_AFTER = "429 with retry-after"
    RATE_LIMITED = "429 without retry-after"
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502 (an HTML page)"
    UNAVAILABLE = "503 (an empty body)"
    STALL = "stall past the timeout"
    RESET = "connection reset mid-body"
    TRUNCATED = "truncated body"
    NOT_JSON = "200 with a body that is not JSON"
    ERROR_200 = "200 with an error body"
    TRICKLE = "slow trickled body"
    HUGE = "huge body"


# Faults after which no HTTP answer reached the client (engine/retry.py may leave them uncharged).
NO_ANSWER = frozenset({Fault.STALL, Fault.RESET, Fault.TRUNCATED})
SUCCESSES = frozenset({Fault.NORMAL, Fault.TRICKLE, Fault.HUGE})

# Every fault at once, with about a third of the answers telling the engine to back off (429, 502, 503,
# no answer): its concurrency window then stays small, so a stall holds up much of the work; stalls
# are rare for that reason (each costs the request timeout).
DEFAULT_MIX: Mapping[Fault, float] = {
    Fault.NORMAL: 0.54,
    Fault.RATE_LIMITED_RETRY_AFTER: 0.04,
    Fault.RATE_LIMITED: 0.04,
    Fault.SERVER_ERROR: 0.05,
    Fault.BAD_GATEWAY: 0.04,
    Fault.UNAVAILABLE: 0.04,
    Fault.STALL: 0.01,
    Fault.RESET: 0.04,
    Fault.TRUNCATED: 0.04,
    Fault.NOT_JSON: 0.03,
    Fault.ERROR_200: 0.03,
    Fault.TRICKLE: 0.07,
    Fault.HUGE: 0.03,
}

# What Overnight's error says about a request whose (last) attempt met the fault: the result's
# status_code and words in its message, lower case.
SAYS: Mapping[Fault, tuple[int, tuple[str, ...]]] = {
    Fault.RATE_LIMITED_RETRY_AFTER: (429, ("rate limit",)),
    Fault.RATE_LIMITED: (429, ("rate limit",)),
    Fault.SERVER_ERROR: (500, ("the server had an error",)),
    Fault.BAD_GATEWAY: (502, ("502 bad gateway",)),
    Fault.UNAVAILABLE: (503, ("http 503", "empty body")),
    Fault.STALL: (504, ("no answer within",)),
    Fault.RESET: (502, ("connection", "reset")),  # mid-body, or before a byte when the RST overtakes them
    Fault.TRUNCATED: (502, ("connection closed in the middle of the answer", "bytes of the body came")),
    Fault.NOT_JSON: (502, ("http 200", "not a json object")),
    Fault.ERROR_200: (502, ("http 200", "error instead of a result", "overloaded")),
}

_MARKER = re.compile(rb"chaos:([A-Za-z0-9_.-]+)")
_encode = msgspec.json.encode
_BAD_GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></html>"
_RATE_LIMITED = error_body(429, "Rate limit reached for requests. Try again later.", "rate_limit_exceeded")
_SERVER_ERROR = error_body(500, "The server had an error while processing your request.")
_OVERLOADED = error_body(500, "The model is overloaded with other requests right now.", "model_overloaded")


def marker(custom_id: str) -> str:
    """The text to put in a line's prompt so that the upstream knows which line a request is."""
    return f"chaos:{custom_id}"


@dataclass
class ChaosUpstream:
    seed: int
    mix: Mapping[Fault, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    stall_s: float = 5.0  # longer than the backend's request timeout
    trickle_s: float = 0.1  # the whole trickled body, in 10 pieces
    huge_sizes: tuple[int, ...] = (5_000_000, 8_000_000, 12_000_000, 20_000_000)  # bytes, in turn
    max_huge: int = 4  # huge answers at most (then normal ones): each costs its size in the output file
    retry_after_s: str = "0.02"

    def __post_init__(self) -> None:
        self._kinds = list(self.mix)
        self._weights = [self.mix[kind] for kind in self._kinds]
        self.requests_by_line: collections.Counter[str] = collections.Counter()
        self.faults_by_line: dict[str, list[Fault]] = collections.defaultdict(list)
        self.unmarked = 0
        self.port = 0
        self._huge_sent = 0
        self._huge: dict[int, bytes] = {}
        self._huge_answered = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def injected(self) -> dict[str, int]:
        """How many requests got each fault (normal answers included)."""
        with self._lock:
            counts = collections.Counter(fault for faults in self.faults_by_line.values() for fault in faults)
        return {fault.value: counts[fault] for fault in Fault if counts[fault]}

    def choose(self, line: str) -> Fault:
        """The fault for the next request of `line` (counted)."""
        with self._lock:
            self.requests_by_line[line] += 1
            attempt = self.requests_by_line[line]
            fault = random.Random(f"{self.seed}/{line}/{attempt}").choices(self._kinds, self._weights)[0]
            if fault is Fault.HUGE:
                if self._huge_sent >= self.max_huge:
                    fault = Fault.NORMAL
                else:
                    self._huge_sent += 1
            self.faults_by_line[line].append(fault)
        return fault

    # -- running -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[ChaosUpstream]:
        """Serve in a daemon thread with its own event loop until the block ends."""
        ready = threading.Event()
        stop: list[asyncio.Event] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            stop.append(asyncio.Event())
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=512)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await stop[0].wait()
                server.close()
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

        thread = threading.Thread(target=asyncio.run, args=(main(),), name="chaos upstream", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the chaos upstream did not start")
        try:
            yield self
        finally:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(stop[0].set)
            thread.join(30)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection stays open for the next."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        fields = (line.split(":", 1) for line in header_lines if ":" in line)
        headers = {name.strip().lower(): value.strip() for name, value in fields}
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length)
        if not request_line.startswith("POST /v1/chat/completions "):
            await _send(writer, 404, error_body(404, f"Unknown request: {request_line}"))
            return True
        found = _MARKER.search(body)
        if found is None:
            self.unmarked += 1
            return await self._answer(writer, Fault.NORMAL, body)
        return await self._answer(writer, self.choose(found.group(1).decode()), body)

    async def _answer(self, writer: asyncio.StreamWriter, fault: Fault, body: bytes) -> bool:
        if fault is Fault.RATE_LIMITED_RETRY_AFTER:
            await _send(writer, 429, _RATE_LIMITED, {"retry-after": self.retry_after_s})
        elif fault is Fault.RATE_LIMITED:
            await _send(writer, 429, _RATE_LIMITED)
        elif fault is Fault.SERVER_ERROR:
            await _send(writer, 500, _SERVER_ERROR)
        elif fault is Fault.BAD_GATEWAY:
            await _send(writer, 502, _BAD_GATEWAY_PAGE, content_type="text/html")
        elif fault is Fault.UNAVAILABLE:
            await _send(writer, 503, b"")
        elif fault is Fault.NOT_JSON:
            await _send(writer, 200, b"<html><body>Welcome to nginx!</body></html>", content_type="text/html")
        elif fault is Fault.ERROR_200:
            await _send(writer, 200, _OVERLOADED)
        elif fault is Fault.STALL:
            await asyncio.sleep(self.stall_s)
            return False
        else:
            return await self._answer_body(writer, fault, self._success(body, fault))
        return True

    async def _answer_body(self, writer: asyncio.StreamWriter, fault: Fault, payload: bytes) -> bool:
        head = _head(200, len(payload), "application/json", {})
        if fault is Fault.RESET:
            writer.write(head + payload[: len(payload) // 2])
            await writer.drain()
            await asyncio.sleep(0.01)  # most often the bytes are read before the reset comes
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: the close sends a TCP RST, as a crashed server would
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if fault is Fault.TRUNCATED:
            writer.write(head + payload[: len(payload) // 2])
            await writer.drain()
            return False  # closed with a FIN: fewer bytes than Content-Length promised
        if fault is Fault.TRICKLE:
            writer.write(head)
            step = max(1, len(payload) // 10 + 1)
            for start in range(0, len(payload), step):
                await asyncio.sleep(self.trickle_s / 10)
                writer.write(payload[start : start + step])
                await writer.drain()
            return True
        writer.write(head + payload)
        await writer.drain()
        return True

    def _success(self, raw: bytes, fault: Fault) -> bytes:
        try:
            request = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            request = {}
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            request = {"model": "chaos"}
        answer = chat(request, 0, int(time.time()))
        if fault is not Fault.HUGE:
            return _encode(answer)
        size = self.huge_sizes[self._huge_answered % len(self.huge_sizes)]
        self._huge_answered += 1
        if size not in self._huge:  # each size built once: a reply of about `size` characters
            answer["choices"][0]["message"]["content"] = (REPLY + " ") * (size // (len(REPLY) + 1))
            self._huge[size] = _encode(answer)
        return self._huge[size]


def _head(status: int, length: int, content_type: str, extra: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Chaos", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    extra: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> None:
    writer.write(_head(status, len(payload), content_type, extra or {}) + payload)
    await writer.drain()
