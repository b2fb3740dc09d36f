"""The `load` scenario's stores: SQLite + disk, or PostgreSQL + S3 made for the run (scaleout's helpers)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from .scaleout import LOCAL, SEAWEED, _no_stores, _seaweed, _stores, _warm_up, database

StoreEnv = tuple[dict[str, str | None], dict[str, list[int]], str]


class StoresUnavailable(Exception):
    """PostgreSQL or SeaweedFS could not be had: the PostgreSQL + S3 run is skipped."""


@contextlib.asynccontextmanager
async def store_env(work: Path, name: str, *, remote: bool) -> AsyncIterator[StoreEnv]:
    """The server's store variables, the store processes to watch, and the stores in words: SQLite and the
    data folder whatever this shell says, or (`remote`) a new database on tests/support/postgres.py's
    server (dropped at the end) and a SeaweedFS for the run (removed at the end), its blobs under `name`.
    StoresUnavailable when either cannot be had."""
    if not remote:
        yield _no_stores(), {}, LOCAL
        return
    async with contextlib.AsyncExitStack() as stack:
        try:
            db = await stack.enter_async_context(database())
            version = await db.version()
            s3 = stack.enter_context(_seaweed(work, name))
            await _warm_up(s3)
        except Exception as exc:
            raise StoresUnavailable(f"{type(exc).__name__}: {exc}") from exc
        assert s3.process is not None
        where = f"PostgreSQL {version} ({db.found.kind} server) + S3 (SeaweedFS `weed mini`)"
        yield _stores(db, s3, name), {SEAWEED: [s3.process.pid]}, where
