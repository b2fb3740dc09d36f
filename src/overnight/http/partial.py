"""File content by lines with Doubleword's headers (docs/partial-results.md), and the Idempotency-Key
header. GET /v1/files/{file_id}/content is registered by http/files.py and answered here."""

from __future__ import annotations

from aiohttp import web

from overnight.domain import idempotency
from overnight.domain.partial import line_window
from overnight.http.auth import scope_of
from overnight.services.partial import PartialResults

PARTIAL = web.AppKey("partial", PartialResults)
INCOMPLETE = "X-Incomplete"
LAST_LINE = "X-Last-Line"


def idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key, checked; None when it sends none."""
    raw = request.headers.get(idempotency.HEADER)
    return None if raw is None else idempotency.check_key(raw)


async def content(request: web.Request) -> web.StreamResponse:
    query = request.query
    window = line_window(query.get("skip"), query.get("offset"), query.get("limit"))
    found = await request.app[PARTIAL].read(scope_of(request), request.match_info["file_id"], window)
    headers = {
        "Content-Type": "application/octet-stream",
        INCOMPLETE: "true" if found.incomplete else "false",
    }
    if found.size is not None:
        headers["Content-Length"] = str(found.size)
    if found.last_line is not None:
        headers[LAST_LINE] = str(found.last_line)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    async for chunk in found.chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


def add_routes(app: web.Application, service: PartialResults) -> None:
    app[PARTIAL] = service
