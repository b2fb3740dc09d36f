"""What only the PostgreSQL store must show: its migrations, and races between processes (many pools).

Every test gets a fresh database (tests/support/postgres.py). The races assert invariants over many
attempts started together with asyncio.gather across several stores, each with its own pool, so they
hold however fast or slow the machine is: no sleeps, no timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from overnight.domain.lifecycle import transition
from overnight.domain.models import Batch, BatchStatus, RequestCounts, ResultKind, ResultRow, Usage
from overnight.store import schema
from overnight.store.postgres import PostgresStore, PostgresUnavailable, describe, migrate
from overnight.store.sqlite import SqliteStore
from support import postgres
from support.server import free_port

S = BatchStatus
K = ResultKind
VERSIONS = [m.version for m in schema.load_migrations(folder="migrations_postgres")]
STORES = 4  # store instances (pools) racing in each test
SECRET = "s3cr3t-Pa55word"
USAGE_FIELDS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with postgres.migrated_database() as found:
        yield found


@pytest.fixture
async def empty_dsn() -> AsyncIterator[str]:
    async with postgres.empty_database() as found:
        yield found


@contextlib.asynccontextmanager
async def opened(dsn: str, count: int = STORES) -> AsyncIterator[list[PostgresStore]]:
    stores = [PostgresStore(dsn, min_size=1, max_size=3) for _ in range(count)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        yield stores
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def a_batch(batch_id: str, status: BatchStatus = S.VALIDATING) -> Batch:
    return Batch(
        batch_id, "proj", "/v1/chat/completions", "file-in", "24h", status, 1_700_000_000, 1_700_086_400
    )


# -- migrations ----------------------------------------------------------------------------------

COLUMNS = """
SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default, collation_name
FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position
"""
INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"
CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2
"""


async def schema_of(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    found = {}
    for name, sql in (("columns", COLUMNS), ("indexes", INDEXES), ("constraints", CONSTRAINTS)):
        found[name] = await query(dsn, sql)
    return found


async def versions_of(dsn: str) -> list[int]:
    return [row[0] for row in await query(dsn, "SELECT version FROM schema_migrations ORDER BY version")]


async def test_migrate_applies_every_version_once(empty_dsn: str) -> None:
    assert list(range(1, len(VERSIONS) + 1)) == VERSIONS  # numbered 1, 2, ... with no gap
    assert await migrate(empty_dsn) == VERSIONS
    assert await migrate(empty_dsn) == []
    assert await versions_of(empty_dsn) == VERSIONS


async def test_a_database_migrated_step_by_step_equals_a_fresh_one(empty_dsn: str, dsn: str) -> None:
    assert await migrate(empty_dsn, upto=1) == [1]
    await query(  # a row written by release 1, before leases existed
        empty_dsn,
        "INSERT INTO batches (id, project, endpoint, input_file_id, completion_window, status, created_at,"
        " expires_at, errors) VALUES ('batch_old', 'proj', '/v1/chat/completions', 'file-in', '24h',"
        " 'in_progress', 1, 2, '[]')",
    )
    assert await migrate(empty_dsn, upto=2) == [2]
    store = PostgresStore(empty_dsn)
    await store.open()  # the rest
    await store.close()
    assert await versions_of(empty_dsn) == VERSIONS
    stepwise, fresh = await schema_of(empty_dsn), await schema_of(dsn)
    assert stepwise == fresh
    assert {row[0] for row in fresh["columns"]} == {
        "api_keys",
        "background_files",
        "background_responses",
        "backend_reports",
        "backend_slots",
        "backend_workers",
        "batch_error_groups",
        "batch_samples",
        "batches",
        "files",
        "idempotency_keys",
        "results",
        "schema_migrations",
        "shards",
        "sync_usage",
        "uploads",
        "webhook_deliveries",
        "webhook_events",
    }
    async with opened(empty_dsn, 1) as (store,):
        old = await store.get_batch("batch_old")
        assert old is not None
        assert old.status is S.IN_PROGRESS
        assert await store.claim_batch("batch_old", "w1", now=10, lease_s=30)


async def test_the_schema_is_sqlites_column_for_column(dsn: str, tmp_path: Path) -> None:
    sqlite_store = SqliteStore(tmp_path / "db.sqlite3")
    await sqlite_store.open()
    await sqlite_store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "db.sqlite3")) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        sqlite_columns = sorted(
            (
                table,
                cid + 1,
                name,
                {"BLOB": "bytea"}.get(kind, kind.lower()),
                "NO" if notnull else "YES",
                default,
            )
            for table in tables
            for cid, name, kind, notnull, default, _ in conn.execute(f"PRAGMA table_info({table})")
        )
        sqlite_indexes = sorted(
            conn.execute("SELECT tbl_name, name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        )
    pg_columns = sorted(row[:6] for row in await query(dsn, COLUMNS))
    assert pg_columns == sqlite_columns
    pg_indexes = sorted(row[:2] for row in await query(dsn, INDEXES) if not row[1].endswith("_pkey"))
    assert pg_indexes == sqlite_indexes


async def test_stores_opening_together_on_an_empty_database_migrate_once(empty_dsn: str) -> None:
    async with opened(empty_dsn) as stores:  # STORES opens at once; any error fails the test
        await stores[0].add_batch(a_batch("batch_1"))
        assert all([await store.get_batch("batch_1") == a_batch("batch_1") for store in stores])
    assert await versions_of(empty_dsn) == VERSIONS


async def test_concurrent_migrate_calls_apply_each_version_exactly_once(empty_dsn: str) -> None:
    applied = await asyncio.gather(*(migrate(empty_dsn) for _ in range(6)))
    assert sorted(version for versions in applied for version in versions) == VERSIONS
    assert await versions_of(empty_dsn) == VERSIONS


async def test_a_database_from_a_newer_release_is_refused(dsn: str) -> None:
    await query(dsn, "INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 0)")
    store = PostgresStore(dsn)
    with pytest.raises(schema.SchemaTooNew, match="9999") as refused:
        await store.open()
    assert describe(dsn) in str(refused.value)
    with pytest.raises(RuntimeError, match="not open"):
        await store.get_batch("batch_1")
    with pytest.raises(schema.SchemaTooNew):
        await migrate(dsn)
    assert await versions_of(dsn) == [*VERSIONS, 9999]


# -- races between stores ------------------------------------------------------------------------


async def test_each_lease_goes_to_exactly_one_of_racing_workers(dsn: str) -> None:
    rng = random.Random(7)
    batch_ids = [f"batch_{n:03d}" for n in range(25)]
    async with opened(dsn) as stores:
        for batch_id in batch_ids:
            await stores[0].add_batch(a_batch(batch_id))
        for now in (100, 130, 160):  # each round starts when the last round's leases (30 s) ran out
            attempts = [
                (store, batch_id, f"w{now}-{s}-{k}")
                for batch_id in batch_ids
                for s, store in enumerate(stores)
                for k in range(3)
            ]
            rng.shuffle(attempts)
            won = await asyncio.gather(
                *(store.claim_batch(batch_id, worker, now, 30) for store, batch_id, worker in attempts)
            )
            winners: dict[str, list[str]] = {batch_id: [] for batch_id in batch_ids}
            for (_, batch_id, worker), ok in zip(attempts, won, strict=True):
                if ok:
                    winners[batch_id].append(worker)
            assert all(len(found) == 1 for found in winners.values()), winners
            held = dict(await query(dsn, "SELECT id, worker_id FROM batches"))
            assert held == {batch_id: found[0] for batch_id, found in winners.items()}


async def test_overlapping_results_from_two_stores_count_each_line_once(dsn: str) -> None:
    rng = random.Random(11)
    lines = range(1, 3001)
    kinds = {n: (K.SUCCEEDED, K.FAILED, K.NOT_RUN)[n % 3] for n in lines}

    def row(n: int) -> ResultRow:
        return ResultRow(n, kinds[n], b'{"line":%d}' % n, Usage(n % 7, n % 5, n % 3, n % 2))

    async with opened(dsn, 2) as (first, second):
        for round_no in range(3):
            batch_id = f"batch_{round_no}"
            await first.add_batch(a_batch(batch_id, S.IN_PROGRESS))
            calls = []
            for store, size, offset in ((first, 250, 0), (second, 300, 125)):
                numbers = [n for n in lines if n > offset] + [n for n in lines if n <= offset]
                for start in range(0, len(numbers), size):
                    group = [row(n) for n in numbers[start : start + size]]
                    rng.shuffle(group)  # each group in its own order: the store must not deadlock
                    calls.append(store.record_results(batch_id, group))
            rng.shuffle(calls)
            new = await asyncio.gather(*calls)
            assert sum(new) == len(lines)
            batch = await second.get_batch(batch_id)
            assert batch is not None
            completed = sum(kind is K.SUCCEEDED for kind in kinds.values())
            failed = sum(kind is K.FAILED for kind in kinds.values())
            assert batch.request_counts == RequestCounts(0, completed, failed)
            assert batch.usage == Usage(*(sum(getattr(row(n).usage, f) for n in lines) for f in USAGE_FIELDS))
            assert await first.finished_lines(batch_id) == set(lines)


async def test_racing_transitions_from_many_stores_let_exactly_one_win(dsn: str) -> None:
    rng = random.Random(13)
    async with opened(dsn) as stores:
        batches = [transition(a_batch(f"batch_{n:03d}"), S.IN_PROGRESS, now=1) for n in range(20)]
        for batch in batches:
            await stores[0].add_batch(batch)
        attempts = [
            (store, transition(batch, target, now=2))
            for batch in batches
            for store in stores
            for target in (S.FINALIZING, S.CANCELLING, S.EXPIRED)
        ]
        rng.shuffle(attempts)
        won = await asyncio.gather(
            *(store.transition_batch(move, [S.IN_PROGRESS]) for store, move in attempts)
        )
        winners: dict[str, list[Batch]] = {batch.id: [] for batch in batches}
        for (_, move), ok in zip(attempts, won, strict=True):
            if ok:
                winners[move.id].append(move)
        assert all(len(found) == 1 for found in winners.values())
        for batch_id, (move,) in winners.items():
            assert await stores[-1].get_batch(batch_id) == move


async def test_a_cancelled_caller_does_not_cancel_its_write(dsn: str) -> None:
    async with opened(dsn, 1) as (store,):
        await store.add_batch(a_batch("batch_1", S.IN_PROGRESS))
        rows = [ResultRow(n, K.SUCCEEDED, b"x") for n in range(2000)]
        call = asyncio.ensure_future(store.record_results("batch_1", rows))
        await asyncio.sleep(0)  # the call has handed its statement over
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    async with opened(dsn, 1) as (again,):
        assert len(await again.finished_lines("batch_1")) == 2000


# -- secrets -------------------------------------------------------------------------------------


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def test_the_password_never_shows(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    known = urlsplit(dsn).password
    secret = known or SECRET  # the servers of these tests trust local connections: any password does
    secret_dsn = dsn if known else with_password(dsn, SECRET)
    store = PostgresStore(secret_dsn)
    assert secret not in repr(store)
    assert describe(secret_dsn) in repr(store)
    await store.open()
    await store.add_batch(a_batch("batch_1"))
    await store.close()

    refused = PostgresStore(f"postgresql://someone:{SECRET}@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(PostgresUnavailable) as failure:
        await refused.open()
    shown = "".join(traceback.format_exception(failure.value))
    assert "127.0.0.1" in shown
    assert SECRET not in shown
    with pytest.raises(PostgresUnavailable) as failure:
        await migrate(f"postgresql://someone:{SECRET}@127.0.0.1:{free_port()}/nothing?password={SECRET}x")
    assert SECRET not in "".join(traceback.format_exception(failure.value))
    assert secret not in caplog.text
    assert SECRET not in caplog.text
    assert "someone@127.0.0.1" in describe(f"postgresql://someone:{SECRET}@127.0.0.1:5/db?password={SECRET}")
    assert SECRET not in describe(f"postgresql://someone@127.0.0.1:5/db?password={SECRET}")
