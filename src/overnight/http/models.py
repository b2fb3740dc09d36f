"""Handlers for /v1/models."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from overnight.http.wire import json_response
from overnight.services.models import ModelCard, ModelsService

MODELS = web.AppKey("models", ModelsService)


def model_json(card: ModelCard) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": card.owned_by}


async def list_models(request: web.Request) -> web.Response:
    cards = await request.app[MODELS].list_models()
    return json_response({"object": "list", "data": [model_json(card) for card in cards]})


async def retrieve(request: web.Request) -> web.Response:
    card = await request.app[MODELS].retrieve(request.match_info["model"])
    return json_response(model_json(card))


def add_routes(app: web.Application, service: ModelsService) -> None:
    app[MODELS] = service
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve)
