"""asyncpg against psycopg 3 on what the engine asks of a PostgreSQL store, on this machine's server.

Three measurements per driver, each on a fresh migrated database (tests/support/postgres.py finds the
server: OVERNIGHT_TEST_DATABASE_URL, the machine's own, or an embedded one) and through the store's own
SQL (overnight/store/postgres_sql.py), so only the driver differs:

- record_results: groups of GROUP rows inserted with their counters, one statement each, POOL at once;
- get_batch: one-row lookups by id, one at a time on one connection (round trips/s), and POOL at once;
- result_lines: STREAM rows read back in pages of PAGE, as rows joined in Python and as one value per
  page joined by the server (MB/s of file content).

Then the same through PostgresStore itself (the chosen driver, asyncpg, plus the store's own Python).

psycopg runs with its raw cursor (the same $n placeholders) and binary transfer both ways. Nothing here
runs in `make test`; `python -m bench --only pgdriver` is not wired in: run `python -m bench.pgdriver`.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

from overnight.store import postgres_sql as sql
from overnight.store import rows

from .report import Section

GROUP = 500
GROUPS = 100  # GROUP * GROUPS rows recorded, then streamed back
STREAM = GROUP * GROUPS
PAGE = 5_000
POOL = 4
LOOKUPS = 3_000
LINE_BYTES = 700  # about one chat completion result line
MB = 1_000_000

# The alternative to the store's RESULT_LINES_PAGE: the page's lines joined by the server into one value.
SERVER_JOINED_PAGE = """
SELECT count(*), max(line_no), string_agg(line || '\\x0a'::bytea, ''::bytea ORDER BY line_no)
FROM (
    SELECT line_no, line FROM results
    WHERE batch_id = $1 AND line_no > $2 AND kind = ANY($3::text[])
    ORDER BY line_no LIMIT $4
) AS page
"""


def _line(n: int) -> bytes:
    head = b'{"id":"batch_req_%08d","custom_id":"line-%d","response":{"status_code":200,"body":"' % (n, n)
    return head + b"x" * (LINE_BYTES - len(head) - 4) + b'"}}'


def _groups() -> list[list[Any]]:
    groups = []
    for start in range(0, STREAM, GROUP):
        numbers = list(range(start, start + GROUP))
        groups.append(
            [
                numbers,
                ["succeeded" if n % 10 else "failed" for n in numbers],
                [_line(n) for n in numbers],
                *([[n % 50 for n in numbers]] * 4),
            ]
        )
    return groups


def _batch_params(batch_id: str) -> list[Any]:
    values: dict[str, Any] = dict.fromkeys(rows.BATCH_COLUMNS)
    values.update(
        id=batch_id,
        project="proj",
        endpoint="/v1/chat/completions",
        input_file_id="file-in",
        completion_window="24h",
        created_at=1,
        expires_at=2,
        status="in_progress",
        errors="[]",
        total=STREAM,
        **dict.fromkeys(rows.COUNTERS, 0),
    )
    return [values[column] for column in rows.BATCH_COLUMNS]


class _Asyncpg:
    name = "asyncpg"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: Any = None

    async def __aenter__(self) -> _Asyncpg:
        import asyncpg

        self._pool = await asyncpg.create_pool(self._dsn, min_size=POOL, max_size=POOL)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.close()

    async def fetch(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._pool.acquire() as conn:
            return [tuple(row) for row in await conn.fetch(query, *args)]

    async def lookups(self, query: str, args: list[Any], count: int) -> None:
        async with self._pool.acquire() as conn:
            for _ in range(count):
                await conn.fetchrow(query, *args)


class _Psycopg:
    name = "psycopg"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: Any = None

    async def __aenter__(self) -> _Psycopg:
        # Not a dependency of Overnight (asyncpg is): pip install 'psycopg[binary]' psycopg_pool to compare.
        psycopg: Any = importlib.import_module("psycopg")
        psycopg_pool: Any = importlib.import_module("psycopg_pool")

        async def configure(conn: Any) -> None:
            await conn.set_autocommit(True)

        self._pool = psycopg_pool.AsyncConnectionPool(
            self._dsn,
            min_size=POOL,
            max_size=POOL,
            open=False,
            kwargs={"cursor_factory": psycopg.AsyncRawCursor},
            configure=configure,
        )
        await self._pool.open(wait=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.close()

    async def fetch(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn, conn.cursor(binary=True) as cursor:
            await cursor.execute(query, args, binary=True)
            return [] if cursor.description is None else list(await cursor.fetchall())

    async def lookups(self, query: str, args: list[Any], count: int) -> None:
        async with self._pool.connection() as conn, conn.cursor(binary=True) as cursor:
            for _ in range(count):
                await cursor.execute(query, args, binary=True, prepare=True)
                await cursor.fetchone()


async def _measure(client: Any) -> dict[str, float]:
    found: dict[str, float] = {}
    await client.fetch(sql.ADD_BATCH, *_batch_params("batch_1"))
    groups = _groups()
    queue = list(groups)

    async def recorder() -> None:
        while queue:
            await client.fetch(sql.RECORD_RESULTS, "batch_1", *queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(recorder() for _ in range(POOL)))
    found["record_rows_per_s"] = STREAM / (time.perf_counter() - started)
    # again: every row already there, so the statement only finds the conflicts
    queue = list(groups)
    started = time.perf_counter()
    await asyncio.gather(*(recorder() for _ in range(POOL)))
    found["record_duplicate_rows_per_s"] = STREAM / (time.perf_counter() - started)

    await client.lookups(sql.GET_BATCH, ["batch_1"], 200)  # warm: prepared statements
    started = time.perf_counter()
    await client.lookups(sql.GET_BATCH, ["batch_1"], LOOKUPS)
    found["get_batch_per_s_1_conn"] = LOOKUPS / (time.perf_counter() - started)
    started = time.perf_counter()
    await asyncio.gather(*(client.lookups(sql.GET_BATCH, ["batch_1"], LOOKUPS // POOL) for _ in range(POOL)))
    found["get_batch_per_s_pool"] = LOOKUPS // POOL * POOL / (time.perf_counter() - started)

    kinds = ["succeeded", "failed", "not_run"]
    for label, query in (("rows", sql.RESULT_LINES_PAGE), ("server_joined", SERVER_JOINED_PAGE)):
        best = 0.0
        for _ in range(3):
            size, after = 0, -1
            started = time.perf_counter()
            while True:
                rows = await client.fetch(query, "batch_1", after, kinds, PAGE)
                if label == "rows":
                    chunk = b"\n".join([line for _, line in rows]) + b"\n" if rows else b""
                    count, after = len(rows), rows[-1][0] if rows else after
                else:
                    count, last, joined = rows[0]
                    chunk, after = joined or b"", last if count else after
                size += len(chunk)
                if count < PAGE:
                    break
            best = max(best, size / MB / (time.perf_counter() - started))
        found[f"stream_mb_per_s_{label}"] = best
    return found


async def _measure_store(dsn: str) -> dict[str, float]:
    """The same work through PostgresStore itself (asyncpg, plus the store's own Python)."""
    from overnight.domain.models import Batch, BatchStatus, ResultKind, ResultRow, Usage
    from overnight.store.postgres import PostgresStore

    store = PostgresStore(dsn, min_size=POOL, max_size=POOL)
    await store.open()
    try:
        found: dict[str, float] = {}
        batch = Batch(
            "batch_1", "proj", "/v1/chat/completions", "file-in", "24h", BatchStatus.IN_PROGRESS, 1, 2
        )
        await store.add_batch(batch)
        kinds = (ResultKind.FAILED, *[ResultKind.SUCCEEDED] * 9)
        rows = [ResultRow(n, kinds[n % 10], _line(n), Usage(*[n % 50] * 4)) for n in range(STREAM)]
        queue = [rows[start : start + GROUP] for start in range(0, STREAM, GROUP)]

        async def recorder() -> None:
            while queue:
                await store.record_results("batch_1", queue.pop())

        started = time.perf_counter()
        await asyncio.gather(*(recorder() for _ in range(POOL)))
        found["record_rows_per_s"] = STREAM / (time.perf_counter() - started)
        queue = [rows[start : start + GROUP] for start in range(0, STREAM, GROUP)]
        started = time.perf_counter()
        await asyncio.gather(*(recorder() for _ in range(POOL)))
        found["record_duplicate_rows_per_s"] = STREAM / (time.perf_counter() - started)

        async def lookups(count: int) -> None:
            for _ in range(count):
                await store.get_batch("batch_1")

        await lookups(200)
        started = time.perf_counter()
        await lookups(LOOKUPS)
        found["get_batch_per_s_1_conn"] = LOOKUPS / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(lookups(LOOKUPS // POOL) for _ in range(POOL)))
        found["get_batch_per_s_pool"] = LOOKUPS // POOL * POOL / (time.perf_counter() - started)
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            size = sum([len(chunk) async for chunk in store.result_lines("batch_1", list(ResultKind))])
            best = max(best, size / MB / (time.perf_counter() - started))
        found["stream_mb_per_s_rows"] = best
        return found
    finally:
        await store.close()


async def run(work: Path) -> Section:
    from support import postgres

    section = Section("pgdriver", "PostgreSQL drivers on the store's hot statements")
    found = postgres.server()
    results: dict[str, dict[str, float]] = {}
    for client_type in (_Asyncpg, _Psycopg):
        if importlib.util.find_spec(client_type.name) is None:
            section.notes.append(f"{client_type.name} is not installed: not measured")
            continue
        async with postgres.migrated_database() as dsn, client_type(dsn) as client:
            results[client_type.name] = await _measure(client)
    async with postgres.migrated_database() as dsn:
        results["PostgresStore"] = await _measure_store(dsn)
    section.data["drivers"] = results
    labels = {
        "record_rows_per_s": f"record_results, groups of {GROUP}, {POOL} at once (rows/s)",
        "record_duplicate_rows_per_s": "record_results of rows already there (rows/s)",
        "get_batch_per_s_1_conn": "get_batch, one connection (round trips/s)",
        "get_batch_per_s_pool": f"get_batch, {POOL} connections (round trips/s)",
        "stream_mb_per_s_rows": f"result_lines of {STREAM:,} rows, rows joined in Python (MB/s)",
        "stream_mb_per_s_server_joined": "result_lines, pages joined by the server (MB/s)",
    }
    for key, label in labels.items():
        value = "  ".join(
            f"{name} {figures[key]:,.0f}" for name, figures in results.items() if key in figures
        )
        section.add(label, value)
    section.notes.append(f"server: {found.kind}; lines of {LINE_BYTES} bytes; pages of {PAGE} rows")
    return section


def main() -> None:
    import tempfile

    import uvloop

    from .report import render

    with tempfile.TemporaryDirectory() as folder:
        section = uvloop.run(run(Path(folder)))
    print(render(["pgdriver"], [section]))
    print(json.dumps(section.data, indent=2))


if __name__ == "__main__":
    main()
