"""Reading query parameters and JSON bodies into plain values, with OpenAI-shaped errors."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from overnight.domain.errors import InvalidRequest
from overnight.http.limits import limits_of, read_body


def limit_param(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid 'limit': expected an integer, but got '{raw}'.", param="limit", code="invalid_type"
        ) from None
    if not 1 <= value <= maximum:
        raise InvalidRequest(
            f"Invalid 'limit': must be between 1 and {maximum}, got {value}.",
            param="limit",
            code="invalid_value",
        )
    return value


def choice_param(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in allowed:
        supported = ", ".join(f"'{a}'" for a in allowed)
        raise InvalidRequest(
            f"Invalid value: '{value}'. Supported values are: {supported}.", param=name, code="invalid_value"
        )
    return value


async def json_object(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request, limits_of(request).max_body_bytes)
    try:
        body = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The body must be valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body of your request must be a JSON object.")
    return body
