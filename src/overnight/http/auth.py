"""Bearer-token authentication: which project a request acts for."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from overnight.config import ApiKey
from overnight.domain.errors import Unauthorized

DEFAULT_PROJECT = "default"
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


class Authenticator:
    """With no keys configured every bearer token is accepted and all share one project."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._projects = {key.key: key.project for key in keys}

    def project_for(self, authorization: str | None) -> str:
        token = _bearer(authorization)
        if not self._projects:
            return DEFAULT_PROJECT
        if token is None:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        project = self._projects.get(token)
        if project is None:
            shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * 4
            raise Unauthorized(f"Incorrect API key provided: {shown}.", code="invalid_api_key")
        return project


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def auth_middleware(authenticator: Authenticator) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            request["project"] = authenticator.project_for(request.headers.get("Authorization"))
        return await handler(request)

    return middleware


def project_of(request: web.Request) -> str:
    project: str = request["project"]
    return project
