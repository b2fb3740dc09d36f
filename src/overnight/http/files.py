"""Handlers for /v1/files."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from overnight.domain import limits
from overnight.domain.errors import InvalidRequest
from overnight.http.auth import project_of, scope_of
from overnight.http.limits import idle_read, limits_of
from overnight.http.params import choice_param, limit_param
from overnight.http.partial import content, idempotency_key
from overnight.http.wire import file_json, json_response, list_json
from overnight.services.files import FilesService, FormPart

FILES = web.AppKey("files", FilesService)
_CHUNK = 256 * 1024


# what aiohttp's multipart reader raises on a broken body (no or wrong boundary, bad part headers, cut short)
_MALFORMED = (HttpProcessingError, ValueError, ConnectionResetError)


def _malformed(error: Exception) -> InvalidRequest:
    reason = "a part's headers are invalid" if isinstance(error, HttpProcessingError) else "it is cut short"
    if "boundary" in str(error).lower():
        reason = "its boundary is missing or wrong"
    return InvalidRequest(f"The multipart/form-data body is malformed: {reason}.")


async def _part_chunks(part: BodyPartReader, idle_s: float) -> AsyncIterator[bytes]:
    try:
        while chunk := await idle_read(part.read_chunk(_CHUNK), idle_s):
            yield chunk
    except _MALFORMED as error:
        raise _malformed(error) from None


async def _next_part(reader: MultipartReader, idle_s: float) -> FormPart | None:
    try:
        part = await idle_read(reader.next(), idle_s)
        if part is None:
            return None
        if not isinstance(part, BodyPartReader):
            raise InvalidRequest("Nested multipart bodies are not supported.")
        return FormPart(part.name, part.filename, _part_chunks(part, idle_s))
    except _MALFORMED as error:
        raise _malformed(error) from None


async def _parts(request: web.Request) -> AsyncIterator[FormPart]:
    idle_s = limits_of(request).client_idle_timeout_s
    try:
        reader = await request.multipart()
    except _MALFORMED as error:
        raise _malformed(error) from None
    while (part := await _next_part(reader, idle_s)) is not None:
        yield part


async def upload(request: web.Request) -> web.Response:
    """A refused upload is not read further: aiohttp closes the connection after the answer, as it
    lingers on no unread body (http/slow_clients.py)."""
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("Uploads must be sent as multipart/form-data.")
    file = await request.app[FILES].upload(
        project_of(request), _parts(request), request.content_length, idempotency_key(request)
    )
    return json_response(file_json(file))


async def retrieve(request: web.Request) -> web.Response:
    file = await request.app[FILES].retrieve(scope_of(request), request.match_info["file_id"])
    return json_response(file_json(file))


async def list_files(request: web.Request) -> web.Response:
    page = await request.app[FILES].list(
        scope_of(request),
        purpose=request.query.get("purpose"),
        after=request.query.get("after"),
        limit=limit_param(request, limits.FILE_LIST_DEFAULT_LIMIT, limits.FILE_LIST_MAX_LIMIT),
        order="asc" if choice_param(request, "order", ("asc", "desc"), "desc") == "asc" else "desc",
    )
    return json_response(list_json(page, file_json))


async def delete(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    await request.app[FILES].delete(scope_of(request), file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def add_routes(app: web.Application, service: FilesService) -> None:
    app[FILES] = service
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve)
    app.router.add_delete("/v1/files/{file_id}", delete)
    app.router.add_get("/v1/files/{file_id}/content", content)
