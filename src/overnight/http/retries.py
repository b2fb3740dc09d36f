"""POST /v1/batches/{batch_id}/retry and /retry-requests: a new batch of what failed (docs/retries.md)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overnight.domain.retries import parse_selection
from overnight.http.auth import scope_of
from overnight.http.params import json_object
from overnight.http.partial import PARTIAL, idempotency_key
from overnight.http.wire import batch_json, json_response
from overnight.services.retries import RetryService

RETRIES = web.AppKey("retries", RetryService)


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON body; none at all (what `dw batches retry` sends) is an empty one."""
    if not request.can_read_body:
        return {}
    return await json_object(request)


async def _retry(request: web.Request, route: str) -> web.Response:
    body = await _body(request)
    selection = parse_selection(body, need_request_ids=route == "retry-requests")
    batch = await request.app[RETRIES].retry(
        scope_of(request),
        request.match_info["batch_id"],
        selection,
        body=body,
        idempotency_key=idempotency_key(request),
        route=route,
    )
    partial = request.app.get(PARTIAL)
    return json_response(batch_json(partial.shown(batch) if partial is not None else batch))


async def retry(request: web.Request) -> web.Response:
    return await _retry(request, "retry")


async def retry_requests(request: web.Request) -> web.Response:
    return await _retry(request, "retry-requests")


def add_routes(app: web.Application, service: RetryService) -> None:
    app[RETRIES] = service
    app.router.add_post("/v1/batches/{batch_id}/retry", retry)
    app.router.add_post("/v1/batches/{batch_id}/retry-requests", retry_requests)
