"""Bearer-token authentication: which project a request acts for, and whether its key is an admin's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from overnight.config import ApiKey
from overnight.domain.api_keys import StoredApiKey, hash_secret, looks_stored
from overnight.domain.errors import Unauthorized

DEFAULT_PROJECT = "default"
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a key belongs to: its project, and whether it may see every project."""

    project: str
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The project whose existing objects this key finds (None: every project's, for an admin)."""
        return None if self.admin else self.project


class StoredKeys(Protocol):
    """Where keys made by `overnight keys create` are found (the metadata store)."""

    async def api_key_by_hash(self, secret_hash: str) -> StoredApiKey | None: ...

    async def any_api_keys(self) -> bool: ...


class Authenticator:
    """Keys from the config file and keys kept in the store (found by their hash on every request, with
    no cache, so a revoked key is refused at once by every server sharing the store).

    With no keys at all (none configured, none ever stored) every bearer token is accepted and all share
    one project, as its admin: the server is "open"."""

    def __init__(self, keys: Sequence[ApiKey], stored: StoredKeys | None = None) -> None:
        self._identities = {key.key: Identity(key.project, key.admin) for key in keys}
        self._stored = stored
        self._closed = bool(self._identities)  # once a key exists the server never opens again

    @property
    def open(self) -> bool:
        """Whether the server was open at the last check (`check_open`, which every identify makes)."""
        return not self._closed

    async def check_open(self) -> bool:
        """True while no key is configured and none was ever stored (revoked ones count): anyone is let in."""
        if not self._closed and self._stored is not None and await self._stored.any_api_keys():
            self._closed = True  # keys are never deleted, only revoked: this cannot change back
        return not self._closed

    async def identify(self, authorization: str | None) -> Identity:
        """The identity of an `Authorization` header's bearer token; Unauthorized when it has none."""
        return await self.identify_key(_bearer(authorization))

    async def identify_key(self, token: str | None) -> Identity:
        """The identity of a key as given (a header's token, or what the dashboard's sign-in keeps)."""
        if token is not None:
            identity = self._identities.get(token) or await self._stored_identity(token)
            if identity is not None:
                return identity
        if await self.check_open():
            return Identity(DEFAULT_PROJECT, admin=True)
        if token is None:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        shown = token[:3] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * 4
        raise Unauthorized(f"Incorrect API key provided: {shown}.", code="invalid_api_key")

    async def _stored_identity(self, token: str) -> Identity | None:
        if self._stored is None or not looks_stored(token):
            return None
        key = await self._stored.api_key_by_hash(hash_secret(token))
        if key is None or key.revoked:
            return None
        return Identity(key.project, key.admin)


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
            identity = await authenticator.identify(request.headers.get("Authorization"))
            request["identity"] = identity
            request["project"] = identity.project
        return await handler(request)

    return middleware


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """`path` is one of `prefixes` or below one ("/" stands for itself only, not for every path)."""
    return any(path == prefix or (prefix != "/" and path.startswith(prefix + "/")) for prefix in prefixes)


def project_of(request: web.Request) -> str:
    """The project the request acts for: where what it creates goes (an admin's too: its own)."""
    project: str = request["project"]
    return project


def scope_of(request: web.Request) -> str | None:
    """Where the request's reads and actions by id and its lists look (docs/auth.md): the key's project;
    None, every project, for an admin key."""
    return identity_of(request).scope


def identity_of(request: web.Request) -> Identity:
    identity: Identity = request["identity"]
    return identity
