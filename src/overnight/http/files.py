"""Handlers for /v1/files."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, web

from overnight.domain import limits
from overnight.domain.errors import InvalidRequest
from overnight.http.auth import project_of
from overnight.http.params import choice_param, limit_param
from overnight.http.partial import content, idempotency_key
from overnight.http.wire import file_json, json_response, list_json
from overnight.services.files import FilesService, FormPart

FILES = web.AppKey("files", FilesService)
_DRAIN_LIMIT = 2 * limits.MAX_FILE_BYTES
_CHUNK = 256 * 1024


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(_CHUNK):
        yield chunk


async def _parts(request: web.Request) -> AsyncIterator[FormPart]:
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise InvalidRequest("Nested multipart bodies are not supported.")
        yield FormPart(part.name, part.filename, _part_chunks(part))


async def _drain(request: web.Request) -> None:
    """Read and drop the rest of a refused upload so the client reads our answer instead of a reset."""
    drained = 0
    while drained < _DRAIN_LIMIT and (chunk := await request.content.read(_CHUNK)):
        drained += len(chunk)


async def upload(request: web.Request) -> web.Response:
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("Uploads must be sent as multipart/form-data.")
    try:
        file = await request.app[FILES].upload(
            project_of(request), _parts(request), request.content_length, idempotency_key(request)
        )
    except InvalidRequest:
        await _drain(request)
        raise
    return json_response(file_json(file))


async def retrieve(request: web.Request) -> web.Response:
    file = await request.app[FILES].retrieve(project_of(request), request.match_info["file_id"])
    return json_response(file_json(file))


async def list_files(request: web.Request) -> web.Response:
    page = await request.app[FILES].list(
        project_of(request),
        purpose=request.query.get("purpose"),
        after=request.query.get("after"),
        limit=limit_param(request, limits.FILE_LIST_DEFAULT_LIMIT, limits.FILE_LIST_MAX_LIMIT),
        order="asc" if choice_param(request, "order", ("asc", "desc"), "desc") == "asc" else "desc",
    )
    return json_response(list_json(page, file_json))


async def delete(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    await request.app[FILES].delete(project_of(request), file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


def add_routes(app: web.Application, service: FilesService) -> None:
    app[FILES] = service
    app.router.add_post("/v1/files", upload)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{file_id}", retrieve)
    app.router.add_delete("/v1/files/{file_id}", delete)
    app.router.add_get("/v1/files/{file_id}/content", content)
