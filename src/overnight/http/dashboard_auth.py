"""Who is looking at the dashboard: the API key kept in a cookie after sign-in, checked on every page,
fragment and download; and the same-origin check that keeps other sites from posting to it."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from overnight.domain.errors import Unauthorized
from overnight.http.auth import Authenticator, Identity

COOKIE = "overnight_key"
MAX_KEY_CHARS = 512


async def identity_of_request(request: web.Request, authenticator: Authenticator) -> Identity | None:
    """The signed-in identity; None when keys are configured and the cookie holds none of them.

    With no keys at all everyone is let in, as the API lets in any bearer token."""
    if await authenticator.check_open():
        return await authenticator.identify_key(None)
    key = request.cookies.get(COOKIE)
    if not key or len(key) > MAX_KEY_CHARS:
        return None
    try:
        return await authenticator.identify_key(key)
    except Unauthorized:
        return None


async def check_key(authenticator: Authenticator, key: str) -> Identity | None:
    """The identity of a key typed into the sign-in form, or None."""
    key = key.strip()
    if not key or len(key) > MAX_KEY_CHARS:
        return None
    try:
        return await authenticator.identify_key(key)
    except Unauthorized:
        return None


def came_over_https(request: web.Request) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def keep_key(response: web.StreamResponse, request: web.Request, key: str) -> None:
    """The key in a cookie scripts cannot read and other sites never send (a session cookie: it ends with
    the browser)."""
    response.set_cookie(
        COOKIE,
        key.strip(),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=came_over_https(request),
    )


def forget_key(response: web.StreamResponse, request: web.Request) -> None:
    response.set_cookie(
        COOKIE, "", path="/", max_age=0, httponly=True, samesite="Strict", secure=came_over_https(request)
    )


def same_origin(request: web.Request) -> bool:
    """A POST came from one of this server's own pages: its Origin (else its Referer) names this host.

    Neither header present is refused too: every browser sends Origin on a form POST."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == request.host


def local_path(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (never `//elsewhere` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
