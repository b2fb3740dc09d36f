"""What one request may send (docs/limits.md): the size of its body, and how long its body may stall.

- Every request that says its size (`Content-Length`) past its route's limit is refused with a 413
  before a byte of its body is read: an upload past the largest upload (the files service refines it
  by purpose and quota as the form streams), any other request past `max_body_bytes` (the synchronous
  endpoints apply `sync_max_body_bytes` themselves, http/sync.py).
- A body without a size is read by `read_body`, refused as soon as it passes the limit.
- Every read of a body waits at most `client_idle_timeout_s` for its next bytes (`idle_read`); a client
  that stalls longer gets a 408 and its connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from overnight.config import Settings
from overnight.config_limits import upload_sizes
from overnight.domain.errors import ApiError, PayloadTooLarge, RequestTimedOut
from overnight.domain.quotas import UploadSizes
from overnight.domain.sync import SYNC_ENDPOINTS
from overnight.services.upload_limits import FORM_OVERHEAD

T = TypeVar("T")
UPLOAD_ROUTE = ("POST", "/v1/files")
_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_body_bytes: int = 4 * 1024 * 1024
    uploads: UploadSizes = field(default_factory=UploadSizes)
    client_idle_timeout_s: float = 60.0
    client_header_timeout_s: float = 30.0

    @property
    def max_form_bytes(self) -> int:
        """The most an upload's whole form may declare: the largest file and the other fields."""
        return self.uploads.limit_for(None) + FORM_OVERHEAD


def request_limits(settings: Settings) -> RequestLimits:
    return RequestLimits(
        max_body_bytes=settings.max_body_bytes,
        uploads=upload_sizes(settings),
        client_idle_timeout_s=settings.client_idle_timeout_s,
        client_header_timeout_s=settings.client_header_timeout_s,
    )


LIMITS: web.AppKey[RequestLimits] = web.AppKey("request_limits", RequestLimits)


def limits_of(request: web.Request) -> RequestLimits:
    return request.app.get(LIMITS) or RequestLimits()


def body_too_large(limit: int, setting: str = "max_body_bytes") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than this server's limit of {limit} bytes (setting {setting}).",
        code="request_too_large",
    )


async def idle_read(read: Awaitable[T], idle_s: float) -> T:
    """`read`'s result, or a 408 when no bytes came for `idle_s` seconds."""
    try:
        async with asyncio.timeout(idle_s):
            return await read
    except TimeoutError:
        raise RequestTimedOut(
            f"No part of the request body arrived for {idle_s:g} s (setting client_idle_timeout_s).",
            code="request_timeout",
        ) from None


async def read_body(request: web.Request, limit: int, setting: str = "max_body_bytes") -> bytes:
    """The whole body, refused past `limit` bytes (before reading it, when it says its size), each read
    waiting at most the idle timeout."""
    if request.content_length is not None and request.content_length > limit:
        raise body_too_large(limit, setting)
    idle_s = limits_of(request).client_idle_timeout_s
    parts: list[bytes] = []
    size = 0
    while chunk := await idle_read(request.content.read(_CHUNK), idle_s):
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit, setting)
        parts.append(chunk)
    return b"".join(parts)


def _declared_limit(request: web.Request, limits: RequestLimits) -> tuple[int, ApiError] | None:
    """The most the request may declare, and its refusal past that; None: the route sees to it."""
    if (request.method, request.path) == UPLOAD_ROUTE:
        return limits.max_form_bytes, limits.uploads.too_large(None)
    if request.method == "POST" and request.path in SYNC_ENDPOINTS:
        return None  # sync_max_body_bytes, applied by http/sync.py
    return limits.max_body_bytes, body_too_large(limits.max_body_bytes)


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a declared body past its route's limit before reading it; render aiohttp's own 413 (a
    form read by `request.post()` past `client_max_size`) with the setting's name."""
    limits = limits_of(request)
    declared = _declared_limit(request, limits)
    if declared is not None and request.content_length is not None and request.content_length > declared[0]:
        raise declared[1]
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        raise body_too_large(limits.max_body_bytes) from None
