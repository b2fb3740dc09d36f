"""Handlers for the synchronous endpoints: `POST /v1/chat/completions`, `/v1/completions`,
`/v1/embeddings`, `/v1/responses` and `/v1/moderations` (docs/sync.md).

A whole answer is sent as the upstream gave it (status, JSON body, its retry advice); a stream is sent
as server-sent events, each chunk written as it arrives. `/v1/responses` with `background: true` is
handed to the background responses (http/background.py) where they are mounted, and refused with a
400 where they are not. Bodies larger than `sync_max_body_bytes` are refused with a 413.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from overnight.domain.errors import InvalidRequest
from overnight.domain.sync import SYNC_ENDPOINTS
from overnight.http import background, limits
from overnight.http.auth import project_of
from overnight.services.sync import StreamedAnswer, SyncService, WholeAnswer

log = logging.getLogger("overnight.http")
SYNC = web.AppKey("sync", SyncService)
BODY_LIMIT = web.AppKey("sync_body_limit", int)
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused past `limit` bytes (before reading it, when it says its size)."""
    return await limits.read_body(request, limit, "sync_max_body_bytes")


def _handler(endpoint: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[SYNC]
        body = await read_body(request, request.app[BODY_LIMIT])
        wanted = service.read(endpoint, body)
        if wanted.background:
            return await _hand_to_background(request, body)
        answer = await service.run(project_of(request), wanted, body)
        if isinstance(answer, WholeAnswer):
            response = web.Response(status=answer.status, body=answer.body, content_type="application/json")
            for name, value in answer.headers:
                response.headers[name] = value
            return response
        return await _stream(request, answer)

    return handle


async def _stream(request: web.Request, answer: StreamedAnswer) -> web.StreamResponse:
    response = web.StreamResponse(status=answer.status, headers=_STREAM_HEADERS)
    response.content_type = answer.content_type.split(";")[0].strip() or "text/event-stream"
    for name, value in answer.headers:
        response.headers[name] = value
    try:
        await response.prepare(request)
        async for chunk in answer.chunks:
            await response.write(chunk)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    except ConnectionError as exc:  # the client went away: stop reading the upstream
        log.info("client left a stream of %s early: %s", request.path, exc)
    finally:
        await answer.chunks.aclose()
    return response


async def _hand_to_background(request: web.Request, body: bytes) -> web.StreamResponse:
    """`background: true`: the background responses' business, where this server has them."""
    if background.BACKGROUND not in request.app:
        raise InvalidRequest(
            "Background mode is not available on this server: send the request without 'background'.",
            param="background",
            code="unsupported_value",
        )
    decoded: dict[str, Any] = msgspec.json.decode(body)  # read_request has seen it is an object
    return await background.create_background(request, decoded)


async def _start_usage(app: web.Application) -> None:
    app[SYNC].usage.start()


async def _close_usage(app: web.Application) -> None:
    await app[SYNC].usage.close()


def add_routes(app: web.Application, service: SyncService, *, body_limit: int) -> None:
    """Mount before the background responses: `POST /v1/responses` is these handlers'."""
    app[SYNC] = service
    app[BODY_LIMIT] = body_limit
    for endpoint in SYNC_ENDPOINTS:
        app.router.add_post(endpoint, _handler(endpoint))
    app.on_startup.append(_start_usage)
    app.on_cleanup.append(_close_usage)
