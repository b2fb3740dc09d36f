"""A real HTTP server that imitates an OpenAI-compatible model server, with failure knobs.

In-process::

    async with FakeUpstream(latency_s=0.0) as fake:
        ...  # fake.base_url == "http://127.0.0.1:<port>/v1"; fake.stats() / GET /_stats

As a subprocess: ``python tests/support/fake_upstream.py --port N [--latency-ms X]`` prints
``READY <base_url>`` once listening and stops on SIGTERM/SIGINT.

Knobs (`Directive` fields) are set globally (constructor `knobs=`, CLI flags, ``POST /_control``)
and per request under the body's ``"fake"`` key, which wins field by field. The failure modes
(`hang`, `reset`, `text_body`, `status`) apply to every request, or, when `fail_times` is set, only
to the first `fail_times` requests of each request key (``fake.key``, else a hash of the raw body);
`fail_times` without a mode fails with 500. `delay_ms` always applies.

Holding: a request with `hold` waits before answering until released (``POST /_control`` with
``{"release": N}``, the N oldest held; -1 for all); `stream_hold` holds a streamed answer after its first
chunk the same way. `stats()["held"]` says how many wait now. `stream_reset` cuts a stream off after its
first chunk.

Streaming: a chat, completion or responses request with ``"stream": true`` is answered with server-sent
events as OpenAI writes them (word by word; the usage chunk when ``stream_options.include_usage``),
`chunk_delay_ms` apart.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from aiohttp import web

try:
    from .fake_bodies import BUILDERS, MODELS, STREAM_BUILDERS, Builder, error_body
except ImportError:  # run as a script: python tests/support/fake_upstream.py
    from fake_bodies import (  # type: ignore[import-not-found, no-redef]
        BUILDERS,
        MODELS,
        STREAM_BUILDERS,
        Builder,
        error_body,
    )

_encode = msgspec.json.encode


class Directive(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Behaviour knobs; None means 'not set here'."""

    delay_ms: float | None = None
    status: int | None = None
    fail_times: int | None = None
    hang: bool | None = None
    reset: bool | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    should_retry: str | None = None  # sent as x-should-retry
    text_body: str | None = None
    key: str | None = None
    hold: bool | None = None  # wait until released (POST /_control {"release": N})
    stream_hold: bool | None = None  # a stream waits after its first chunk until released
    chunk_delay_ms: float | None = None  # between the chunks of a stream
    stream_reset: bool | None = None  # a stream is cut off (TCP reset) after its first chunk


def _pick(local: Directive | None, glob: Directive, name: str) -> Any:
    value = getattr(local, name) if local is not None else None
    return getattr(glob, name) if value is None else value


class FakeUpstream:
    """The fake server. Use as an async context manager, or call start()/close()."""

    def __init__(
        self,
        port: int = 0,
        latency_s: float = 0.0,
        *,
        host: str = "127.0.0.1",
        knobs: Directive | None = None,
        max_concurrency_before_429: int | None = None,
        track_keys: bool = True,
        api_key: str | None = None,
        echo_key: bool = False,
    ) -> None:
        """`api_key`: when set, a model request must carry `Authorization: Bearer <api_key>`; any other
        is answered 401 as OpenAI does, the key it got masked (`echo_key`: in full, as a careless server
        might)."""
        self.host = host
        self.api_key = api_key
        self.echo_key = echo_key
        self.port = port
        self.knobs = knobs if knobs is not None else Directive()
        if latency_s and self.knobs.delay_ms is None:
            self.knobs.delay_ms = latency_s * 1000.0
        self.max_concurrency_before_429 = max_concurrency_before_429
        self.track_keys = track_keys
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self._held: list[asyncio.Future[None]] = []
        self.in_flight = 0
        self.clear_stats()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("FakeUpstream is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        for path, build in BUILDERS.items():
            app.router.add_post(path, self._handler(path, build))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_stats", self._stats_handler)
        app.router.add_post("/_control", self._control_handler)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._released = asyncio.Event()
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner

    async def close(self) -> None:
        self._released.set()  # lets hanging handlers finish
        self.release(-1)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- counters ----------------------------------------------------------------------------------

    def clear_stats(self) -> None:
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.by_endpoint: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.by_key: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._served = 0
        self.last_headers: Mapping[str, str] = {}

    def key_count(self, key: str) -> int:
        return self.by_key.get(key, 0)

    @property
    def held(self) -> int:
        return sum(1 for waiter in self._held if not waiter.done())

    def release(self, count: int) -> int:
        """Let the `count` oldest held requests go (-1: all); how many went."""
        waiting = [waiter for waiter in self._held if not waiter.done()]
        chosen = waiting if count < 0 else waiting[:count]
        for waiter in chosen:
            waiter.set_result(None)
        self._held = [waiter for waiter in self._held if not waiter.done()]
        return len(chosen)

    async def _hold(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.append(waiter)
        await waiter

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "held": self.held,
            "by_endpoint": dict(self.by_endpoint),
            "by_status": dict(self.by_status),
            "by_key": dict(self.by_key),
        }

    def _count_status(self, status: int | str) -> None:
        label = str(status)
        self.by_status[label] = self.by_status.get(label, 0) + 1

    # -- request handling ------------------------------------------------------------------------

    def _handler(self, path: str, build: Builder) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            self.last_headers = request.headers
            self.requests += 1
            self.by_endpoint[path] = self.by_endpoint.get(path, 0) + 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight
            try:
                refused = self._refuse_key(request)
                if refused is not None:
                    return refused
                return await self._answer(request, raw, build)
            except asyncio.CancelledError:
                self._count_status("cancelled")
                raise
            finally:
                self.in_flight -= 1

        return handle

    def _refuse_key(self, request: web.Request) -> web.Response | None:
        """The 401 for a request without the expected key (None when no key is expected, or it is right)."""
        if self.api_key is None:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip() == self.api_key:
            return None
        shown = given[:3] + "*" * 8 + given[-4:] if len(given) > 8 else "*" * 4
        if self.echo_key:
            shown = given
        message = f"Incorrect API key provided: {shown}."
        return self._json(401, error_body(401, message, "invalid_api_key"), "req_fake_unauthorized")

    async def _answer(
        self,
        request: web.Request,
        raw: bytes,
        build: Builder,
    ) -> web.StreamResponse:
        self._served += 1
        request_id = f"req_fake{self._served:016x}"
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict):
            return self._json(400, error_body(400, "The request body is not a JSON object."), request_id)
        local: Directive | None = None
        fake = body.pop("fake", None)
        if fake is not None:
            try:
                local = msgspec.convert(fake, Directive)
            except msgspec.ValidationError as exc:
                return self._json(400, error_body(400, f"Bad 'fake' directive: {exc}"), request_id)
        glob = self.knobs
        key = (local.key if local is not None else None) or glob.key
        if key is None and (self.track_keys or _pick(local, glob, "fail_times") is not None):
            key = hashlib.blake2b(raw, digest_size=8).hexdigest()
        if key is not None and self.track_keys:
            self.by_key[key] = self.by_key.get(key, 0) + 1
        headers = {"x-request-id": request_id}
        limit = self.max_concurrency_before_429
        if limit is not None and self.in_flight > limit:
            self._retry_headers(local, glob, headers)
            message = f"Too many concurrent requests (limit {limit})."
            return self._json(429, error_body(429, message, "rate_limit_exceeded"), request_id, headers)
        delay_ms = _pick(local, glob, "delay_ms")
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000.0)
        if local is None and glob == _NO_KNOBS:  # the fast path
            return await self._succeed(request, body, build, request_id, headers)
        return await self._directed(request, body, build, key, local, headers)

    async def _directed(
        self,
        request: web.Request,
        body: dict[str, Any],
        build: Builder,
        key: str | None,
        local: Directive | None,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        glob = self.knobs
        request_id = headers["x-request-id"]
        if _pick(local, glob, "hold"):
            await self._hold()
        status: int | None = _pick(local, glob, "status")
        hang, reset = _pick(local, glob, "hang"), _pick(local, glob, "reset")
        text_body: str | None = _pick(local, glob, "text_body")
        fail_times: int | None = _pick(local, glob, "fail_times")
        if fail_times is not None:
            assert key is not None
            failed = self._failures.get(key, 0)
            if failed >= fail_times:
                return await self._succeed(request, body, build, request_id, headers, local)
            self._failures[key] = failed + 1
            if not (hang or reset or text_body is not None or status is not None):
                status = 500
        self._retry_headers(local, glob, headers)
        if hang:
            self._count_status("hang")
            await self._released.wait()
            return self._json(503, error_body(503, "The fake upstream is shutting down."), request_id)
        if reset:
            self._count_status("reset")
            _abort(request)
            return web.Response(status=500)
        if text_body is not None:
            code = status if status is not None else 200
            self._count_status(code)
            return web.Response(status=code, text=text_body, headers=headers)
        if status is not None and status >= 400:
            message = f"The fake upstream was told to answer {status}."
            return self._json(status, error_body(status, message, f"fake_{status}"), request_id, headers)
        return await self._succeed(request, body, build, request_id, headers, local, status or 200)

    async def _succeed(
        self,
        request: web.Request,
        body: dict[str, Any],
        build: Builder,
        request_id: str,
        headers: dict[str, str],
        local: Directive | None = None,
        status: int = 200,
    ) -> web.StreamResponse:
        """The success answer: whole, or as a stream of events when the request asks for one."""
        stream = STREAM_BUILDERS.get(request.path)
        if body.get("stream") is not True or stream is None or not isinstance(body.get("model"), str):
            return self._success(body, build, request_id, headers, status)
        self._count_status(status)
        events = stream(body, self._served, int(time.time()))
        response = web.StreamResponse(status=status, headers={**headers, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        delay_ms = _pick(local, self.knobs, "chunk_delay_ms")
        for number, event in enumerate(events):
            await response.write(event)
            if number == 0 and _pick(local, self.knobs, "stream_reset"):
                self._count_status("reset")
                _abort(request)
                return response
            if number == 0 and _pick(local, self.knobs, "stream_hold"):
                await self._hold()
            elif delay_ms:
                await asyncio.sleep(delay_ms / 1000.0)
        await response.write_eof()
        return response

    def _success(
        self,
        body: dict[str, Any],
        build: Builder,
        request_id: str,
        headers: dict[str, str],
        status: int = 200,
    ) -> web.Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            message = "you must provide a model parameter"
            return self._json(400, error_body(400, message, "missing_model"), request_id, headers)
        payload = build(body, self._served, int(time.time()))
        return self._json(status, _encode(payload), request_id, headers)

    def _json(
        self, status: int, data: bytes, request_id: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        self._count_status(status)
        if headers is None:
            headers = {"x-request-id": request_id}
        return web.Response(status=status, body=data, headers=headers, content_type="application/json")

    @staticmethod
    def _retry_headers(local: Directive | None, glob: Directive, headers: dict[str, str]) -> None:
        retry_after: str | None = _pick(local, glob, "retry_after")
        retry_after_ms: str | None = _pick(local, glob, "retry_after_ms")
        should_retry: str | None = _pick(local, glob, "should_retry")
        if should_retry is not None:
            headers["x-should-retry"] = should_retry
        if retry_after is not None:
            headers["retry-after"] = retry_after
        if retry_after_ms is not None:
            headers["retry-after-ms"] = retry_after_ms

    # -- control endpoints -----------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"} for m in MODELS]
        return web.Response(body=_encode({"object": "list", "data": data}), content_type="application/json")

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=_encode(self.stats()), content_type="application/json")

    async def _control_handler(self, request: web.Request) -> web.Response:
        """Body: knob fields (null unsets), `max_concurrency_before_429`, `clear_stats: true`."""
        try:
            changes = msgspec.json.decode(await request.read())
            if not isinstance(changes, dict):
                raise msgspec.ValidationError("expected a JSON object")
            if changes.pop("clear_stats", False):
                self.clear_stats()
            release = changes.pop("release", None)
            if release is not None:
                self.release(int(release))
            if "max_concurrency_before_429" in changes:
                self.max_concurrency_before_429 = changes.pop("max_concurrency_before_429")
            merged = {**msgspec.to_builtins(self.knobs), **changes}
            self.knobs = msgspec.convert({k: v for k, v in merged.items() if v is not None}, Directive)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return web.Response(status=400, body=error_body(400, str(exc)), content_type="application/json")
        state = msgspec.to_builtins(self.knobs)
        state["max_concurrency_before_429"] = self.max_concurrency_before_429
        return web.Response(body=_encode(state), content_type="application/json")

    async def _not_found(self, request: web.Request) -> web.Response:
        body = error_body(404, f"Unknown request URL: {request.method} {request.path}.", "unknown_url")
        return web.Response(status=404, body=body, content_type="application/json")


_NO_KNOBS = Directive()


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:  # linger 0: close() sends a TCP RST, as a crashed server would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- command line ----------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible upstream for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=None)
    parser.add_argument("--status", type=int, default=None)
    parser.add_argument("--fail-times", type=int, default=None)
    parser.add_argument("--hang", action="store_true", default=None)
    parser.add_argument("--reset", action="store_true", default=None)
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--retry-after-ms", default=None)
    parser.add_argument("--text-body", default=None)
    parser.add_argument("--max-concurrency-before-429", type=int, default=None)
    parser.add_argument("--no-track-keys", action="store_true", help="don't count requests per key")
    parser.add_argument("--api-key", default=None, help="answer 401 unless 'Authorization: Bearer <this>'")
    parser.add_argument("--echo-key", action="store_true", help="a 401 shows the wrong key in full")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    knobs = Directive(
        delay_ms=args.latency_ms,
        status=args.status,
        fail_times=args.fail_times,
        hang=args.hang,
        reset=args.reset,
        retry_after=args.retry_after,
        retry_after_ms=args.retry_after_ms,
        text_body=args.text_body,
    )
    fake = FakeUpstream(
        args.port,
        host=args.host,
        knobs=knobs,
        max_concurrency_before_429=args.max_concurrency_before_429,
        track_keys=not args.no_track_keys,
        api_key=args.api_key,
        echo_key=args.echo_key,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(f"READY {fake.base_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
