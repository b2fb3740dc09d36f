"""The PostgreSQL store on psycopg 3 instead of asyncpg, for measuring the two drivers on the dispatch
benchmark (bench/pgdriver_dispatch.py). Not a store Overnight ships: the same class, the same SQL
(postgres_sql.py, its $n placeholders rewritten as psycopg's named ones), another connection pool.

`python -m bench.psycopg_store serve ...` runs `overnight` with it in place of asyncpg's.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from functools import cache
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from overnight.domain.limits import fair_share
from overnight.store import postgres
from overnight.store import postgres_sql as sql

_PLACEHOLDER = re.compile(r"\$(\d+)")


@cache
def _named(query: str) -> str:
    return _PLACEHOLDER.sub(lambda match: f"%(p{match[1]})s", query)


def _params(args: Sequence[Any]) -> dict[str, Any]:
    return {f"p{number}": value for number, value in enumerate(args, start=1)}


async def _run(conn: AsyncConnection[Any], query: str, args: Sequence[Any]) -> Any:
    return await conn.execute(_named(query), _params(args) if args else None, prepare=True)


class PsycopgStore(postgres.PostgresStore):
    async def open(self) -> None:
        await postgres.migrate(self._dsn, clock=self._clock)
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={"autocommit": True, "application_name": self._server_settings["application_name"]},
            open=False,
        )
        await pool.open(wait=True)
        self._pool = pool  # type: ignore[assignment]

    async def _execute(self, query: str, *args: Any) -> int:
        async def run(pool: Any) -> int:
            async with pool.connection() as conn:
                cursor = await _run(conn, query, args)
                return int(cursor.rowcount)

        return await self._call(run)

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        async def run(pool: Any) -> list[Any]:
            async with pool.connection() as conn:
                return list(await (await _run(conn, query, args)).fetchall())

        return await self._call(run)

    async def _fetchrow(self, query: str, *args: Any) -> Any:
        async def run(pool: Any) -> Any:
            async with pool.connection() as conn:
                return await (await _run(conn, query, args)).fetchone()

        return await self._call(run)

    async def _fetchval(self, query: str, *args: Any) -> Any:
        row = await self._fetchrow(query, *args)
        return None if row is None else row[0]

    async def hold_slots(
        self, backend: str, worker: str, *, wants: bool, in_use: int, limit: int, now: int, lease_s: int
    ) -> tuple[int, int]:
        async def hold(pool: Any) -> tuple[int, int]:
            async with pool.connection() as conn, conn.transaction():
                if wants:
                    await _run(conn, sql.SLOT_WANTED, (backend, worker, now + lease_s))
                else:
                    await _run(conn, sql.SLOT_UNWANTED, (backend, worker))
                live = [
                    row[0] for row in await (await _run(conn, sql.SLOT_WORKERS, (backend, now))).fetchall()
                ]
                target = fair_share(limit, live, worker) if wants else 0
                await _run(conn, sql.SLOTS_PAST_LIMIT, (backend, worker, limit))
                held = [
                    row[0] for row in await (await _run(conn, sql.SLOTS_HELD, (backend, worker))).fetchall()
                ]
                keep = max(target, min(len(held), in_use))
                if held[keep:]:
                    await _run(conn, sql.SLOTS_GIVE_BACK, (backend, held[keep:]))
                await _run(conn, sql.SLOTS_RENEW, (backend, worker, now + lease_s))
                count = min(len(held), keep)
                if count < target:
                    await _run(conn, sql.SLOTS_CREATE, (backend, limit))
                    taken = await _run(
                        conn, sql.SLOTS_TAKE, (backend, worker, limit, now, now + lease_s, target - count)
                    )
                    count += int(taken.rowcount)
                return count, target

        return await self._call(hold)


def main() -> int:
    from overnight import cli, wiring

    built = wiring.build_store

    def build_store(settings: Any, clock: Any) -> Any:
        store = built(settings, clock)
        if isinstance(store, postgres.PostgresStore):
            return PsycopgStore(settings.database_url, clock=clock, application_name="overnight-psycopg")
        return store

    wiring.build_store = build_store
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
