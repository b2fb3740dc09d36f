"""The one place that turns errors into OpenAI's `{"error": {...}}` shape."""

from __future__ import annotations

import logging

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from overnight.domain.errors import ApiError

log = logging.getLogger("overnight.http")


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    response = web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json")
    if 400 <= status < 500 and status not in (408, 429):
        # The SDK retries 408/409/429/5xx unless told not to; a refused request will not change its mind.
        response.headers["x-should-retry"] = "false"
    return response


def render(error: ApiError) -> web.Response:
    response = error_response(
        error.status, error.message, type_=error.type, param=error.param, code=error.code
    )
    for name, value in error.headers:
        response.headers[name] = value
    return response


def _render_http_exception(exc: web.HTTPException, request: web.Request) -> web.StreamResponse:
    if exc.status == 404:
        return error_response(
            404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
        )
    if exc.status == 405:
        return error_response(
            405, f"Method {request.method} is not allowed for {request.path}.", code="method_not_allowed"
        )
    if exc.status == 413:
        return error_response(413, "The request body is too large.", code="request_too_large")
    if exc.status >= 400:
        return error_response(exc.status, exc.reason or "Bad request.")
    raise exc


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return render(error)
    except web.HTTPException as exc:
        return _render_http_exception(exc, request)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500, "The server had an error while processing your request.", type_="server_error"
        )
