"""Bearer-token authentication: which project a request acts for, and whether its key is an admin's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from overnight.config import ApiKey
from overnight.domain.errors import Unauthorized

DEFAULT_PROJECT = "default"
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key belongs to: its project, and whether it may see every project."""

    project: str
    admin: bool = False


class Authenticator:
    """With no keys configured every bearer token is accepted and all share one project, as its admin."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._identities = {key.key: Identity(key.project, key.admin) for key in keys}

    @property
    def open(self) -> bool:
        """True when no keys are configured: anyone is let in (local development)."""
        return not self._identities

    def identify(self, authorization: str | None) -> Identity:
        """The identity of an `Authorization` header's bearer token; Unauthorized when it has none."""
        return self.identify_key(_bearer(authorization))

    def identify_key(self, token: str | None) -> Identity:
        """The identity of a key as given (a header's token, or what the dashboard's sign-in keeps)."""
        if self.open:
            return Identity(DEFAULT_PROJECT, admin=True)
        if token is None:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        identity = self._identities.get(token)
        if identity is None:
            shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * 4
            raise Unauthorized(f"Incorrect API key provided: {shown}.", code="invalid_api_key")
        return identity


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def auth_middleware(authenticator: Authenticator, public_prefixes: Sequence[str] = ()) -> Middleware:
    """Bearer auth on every path but the probes and `public_prefixes` (pages that do their own)."""
    prefixes = tuple(public_prefixes)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path not in PUBLIC_PATHS and not (prefixes and _under(path, prefixes)):
            identity = authenticator.identify(request.headers.get("Authorization"))
            request["identity"] = identity
            request["project"] = identity.project
        return await handler(request)

    return middleware


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """`path` is one of `prefixes` or below one ("/" stands for itself only, not for every path)."""
    return any(path == prefix or (prefix != "/" and path.startswith(prefix + "/")) for prefix in prefixes)


def project_of(request: web.Request) -> str:
    project: str = request["project"]
    return project


def identity_of(request: web.Request) -> Identity:
    identity: Identity = request["identity"]
    return identity
