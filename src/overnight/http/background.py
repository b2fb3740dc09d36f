"""Handlers for background responses: `GET` and `DELETE /v1/responses/{response_id}` and
`POST /v1/responses/{response_id}/cancel`, and the creation that `POST /v1/responses` hands over when
the body says `background: true` (docs/background.md)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overnight.domain.errors import InvalidRequest
from overnight.http.auth import project_of, scope_of
from overnight.http.wire import json_response
from overnight.services.background import BackgroundResponses

BACKGROUND = web.AppKey("background", BackgroundResponses)


async def create_background(request: web.Request, body: dict[str, Any]) -> web.Response:
    """Answer a `POST /v1/responses` whose `body` says `background: true`: the queued Response."""
    return json_response(await request.app[BACKGROUND].create(project_of(request), body))


async def retrieve(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if request.query.get("stream", "").lower() == "true":
        raise InvalidRequest(
            "Streaming a background response is not supported yet: retrieve it without 'stream'.",
            param="stream",
            code="unsupported_value",
        )
    return json_response(await request.app[BACKGROUND].retrieve(scope_of(request), response_id))


async def cancel(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    return json_response(await request.app[BACKGROUND].cancel(scope_of(request), response_id))


async def delete(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    return json_response(await request.app[BACKGROUND].delete(scope_of(request), response_id))


def add_routes(app: web.Application, service: BackgroundResponses) -> None:
    """`POST /v1/responses` is the synchronous endpoints' (http/sync.py): they hand a background request
    to `create_background`."""
    app[BACKGROUND] = service
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
