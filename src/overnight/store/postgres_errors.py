"""PostgreSQL errors as the store reports them: unavailable (and whether for a while), the DSN shown without
its secrets."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, quote, unquote, urlsplit

import asyncpg

from overnight.store.base import StoreUnavailable


class PostgresUnavailable(StoreUnavailable):
    """The database could not be reached or refused the connection (the message names no password).
    `transient` when it may answer later (refused, timed out, reset) rather than a setting being wrong
    (a host that does not resolve, a bad password, a database that does not exist)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# -- the DSN, shown without its secrets --------------------------------------------------------------


def describe(dsn: str) -> str:
    """`postgresql://user@host:port/database`: the DSN without its password or any other parameter."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or ",".join(query.get("host", [])) or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unparsable DSN)"
    user = f"{quote(unquote(parts.username))}@" if parts.username else ""
    return f"{parts.scheme or 'postgresql'}://{user}{host}{port}{parts.path}"


def _secrets_of(dsn: str) -> list[str]:
    try:
        parts = urlsplit(dsn)
        found = [parts.password or "", *parse_qs(parts.query).get("password", [])]
    except ValueError:
        found = [dsn]
    return [secret for text in found if text for secret in {text, quote(text), unquote(text)}]


def _scrubbed(text: str, dsn: str) -> str:
    for secret in sorted(_secrets_of(dsn), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def unavailable(dsn: str, exc: BaseException, *, transient: bool = False) -> PostgresUnavailable:
    reason = _scrubbed(f"{type(exc).__name__}: {exc}", dsn)
    transient = transient or (
        isinstance(exc, OSError | TimeoutError) and not isinstance(exc, socket.gaierror)
    )
    transient = transient or isinstance(exc, asyncpg.CannotConnectNowError)  # the server is starting
    return PostgresUnavailable(f"cannot use PostgreSQL at {describe(dsn)}: {reason}", transient=transient)
