"""Handlers for /v1/batches."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overnight.domain import limits
from overnight.domain.models import Batch
from overnight.http.auth import project_of, scope_of
from overnight.http.params import json_object, limit_param
from overnight.http.partial import PARTIAL, idempotency_key
from overnight.http.wire import batch_json, json_response, list_json
from overnight.services.batches import BatchesService

BATCHES = web.AppKey("batches", BatchesService)


def _json(request: web.Request, batch: Batch) -> dict[str, Any]:
    """The Batch object; with `early_result_file_ids`, its result file ids from the start."""
    partial = request.app.get(PARTIAL)
    return batch_json(partial.shown(batch) if partial is not None else batch)


async def create(request: web.Request) -> web.Response:
    key = idempotency_key(request)
    batch = await request.app[BATCHES].create(
        project_of(request), await json_object(request), idempotency_key=key
    )
    return json_response(_json(request, batch))


async def retrieve(request: web.Request) -> web.Response:
    batch = await request.app[BATCHES].retrieve(scope_of(request), request.match_info["batch_id"])
    return json_response(_json(request, batch))


async def list_batches(request: web.Request) -> web.Response:
    page = await request.app[BATCHES].list(
        scope_of(request),
        after=request.query.get("after"),
        limit=limit_param(request, limits.BATCH_LIST_DEFAULT_LIMIT, limits.BATCH_LIST_MAX_LIMIT),
    )
    return json_response(list_json(page, lambda batch: _json(request, batch)))


async def cancel(request: web.Request) -> web.Response:
    batch = await request.app[BATCHES].cancel(scope_of(request), request.match_info["batch_id"])
    return json_response(_json(request, batch))


def add_routes(app: web.Application, service: BatchesService) -> None:
    app[BATCHES] = service
    app.router.add_post("/v1/batches", create)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)
