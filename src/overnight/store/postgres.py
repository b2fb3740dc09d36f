"""The metadata store on PostgreSQL (asyncpg): a connection pool, every statement in postgres_sql.

Migrations (store/migrations_postgres) are applied on `open()` (and by `migrate()`) on one dedicated
connection holding a session advisory lock, so processes that start together migrate once: the others
wait for the lock and then find nothing left to do. The DSN may carry a password: it never appears in
`repr()`, in the errors raised here or in log lines (`describe()` gives what may be shown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from typing import Any, ParamSpec, TypeVar

import asyncpg

from overnight.domain.api_keys import StoredApiKey
from overnight.domain.background import StoredResponse
from overnight.domain.clock import Clock, SystemClock
from overnight.domain.events import Delivery, Event
from overnight.domain.idempotency import KeyRecord
from overnight.domain.lifecycle import TERMINAL
from overnight.domain.limits import fair_share
from overnight.domain.models import (
    BackendStatus,
    Batch,
    BatchStatus,
    DailyUsage,
    ErrorGroup,
    FileObject,
    Page,
    ResultKind,
    ResultRow,
    Shard,
)
from overnight.domain.partial import ResultOrder
from overnight.domain.progress import Sample
from overnight.domain.sync import SyncUsage
from overnight.store import postgres_background as background
from overnight.store import postgres_keys as keys_sql
from overnight.store import postgres_outbox as outbox
from overnight.store import postgres_quotas as quotas_sql
from overnight.store import postgres_sql as sql
from overnight.store import postgres_stats as stats
from overnight.store import postgres_streaming as streaming
from overnight.store import postgres_sync_usage as sync_sql
from overnight.store import postgres_usage as usage_sql
from overnight.store import schema
from overnight.store import sync_usage_rows as sync_rows
from overnight.store.api_key_rows import key_from_row, key_values
from overnight.store.background_sql import stored_from_row
from overnight.store.base import ALL_LINES, LineRange, Order
from overnight.store.postgres_errors import PostgresUnavailable as PostgresUnavailable
from overnight.store.postgres_errors import describe as describe
from overnight.store.postgres_errors import unavailable
from overnight.store.rows import (
    BATCH_COLUMNS,
    TRANSITION_COLUMNS,
    batch_from_row,
    batch_values,
    page,
    shard_from_row,
)
from overnight.store.stats import backend_from_row, error_group, sample_from_row
from overnight.store.usage_rows import ENQUEUED_STATUSES, daily_usage, in_order

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

log = logging.getLogger(__name__)

MIGRATIONS_FOLDER = "migrations_postgres"
RESULTS_PAGE = 5000
DELETE_CHUNK = 5000  # rows per statement, so other calls are not stuck behind a big delete
CONNECT_TIMEOUT_S = 10.0
SERVER_SETTINGS = {"application_name": "overnight", "jit": "off"}  # short statements: JIT only costs
_TERMINAL = sorted(status.value for status in TERMINAL)


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise unavailable(dsn, exc) from None


# -- migrations ----------------------------------------------------------------------------------


async def _apply_migrations(conn: asyncpg.Connection, dsn: str, now: int, upto: int | None) -> list[int]:
    """Under the migration lock (held until `conn` closes), apply each missing version in its own
    transaction, recorded in schema_migrations; a process that waited for the lock finds them done."""
    migrations = schema.load_migrations(folder=MIGRATIONS_FOLDER)
    await conn.fetchval(sql.LOCK_MIGRATIONS, sql.MIGRATION_LOCK_KEY)
    if not await conn.fetchval(sql.SCHEMA_MIGRATIONS_EXISTS):  # so a role without CREATE may open
        await conn.execute(schema.SCHEMA_MIGRATIONS_DDL)
    applied = {row[0] for row in await conn.fetch(sql.APPLIED_VERSIONS)}
    try:
        schema.check_known(applied, migrations)
    except schema.SchemaTooNew as exc:
        raise schema.SchemaTooNew(f"PostgreSQL database {describe(dsn)}: {exc}") from None
    done = []
    for migration in migrations:
        if migration.version in applied or (upto is not None and migration.version > upto):
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)  # no arguments: the whole script in one simple query
            await conn.execute(sql.RECORD_MIGRATION, migration.version, now)
        done.append(migration.version)
        log.info("applied PostgreSQL migration %s to %s", migration.name, describe(dsn))
    return done


async def migrate(dsn: str, *, clock: Clock | None = None, upto: int | None = None) -> list[int]:
    """Bring the database's schema up to date (or only up to version `upto`): the versions this call
    applied, in order; none when it was current. Raises SchemaTooNew when the database has versions this
    release does not know, PostgresUnavailable when it cannot connect."""
    now = int((clock if clock is not None else SystemClock()).now())
    conn = await _connect(dsn)
    try:
        return await _apply_migrations(conn, dsn, now, upto)
    finally:
        await conn.close()  # which releases the migration lock


# -- rows <-> values -------------------------------------------------------------------------------


def _file_from_row(row: asyncpg.Record) -> FileObject:
    return FileObject(*row)


def _result_columns(rows: Sequence[ResultRow]) -> list[list[Any]]:
    """One array per column, of the first row of each line, in line order (see RECORD_RESULTS)."""
    first: dict[int, ResultRow] = {}
    for row in rows:
        first.setdefault(row.line_no, row)
    ordered = [first[line_no] for line_no in sorted(first)]
    return [
        [row.line_no for row in ordered],
        [row.kind.value for row in ordered],
        [row.line for row in ordered],
        [row.usage.input_tokens for row in ordered],
        [row.usage.output_tokens for row in ordered],
        [row.usage.cached_tokens for row in ordered],
        [row.usage.reasoning_tokens for row in ordered],
    ]


def _changed(status: str) -> int:
    """The row count of a command tag such as 'UPDATE 1' or 'DELETE 5000'."""
    return int(status.rsplit(" ", 1)[-1])


def _values(statuses: Collection[BatchStatus]) -> list[str]:
    return sorted({BatchStatus(status).value for status in statuses})


# -- the store -----------------------------------------------------------------------------------


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Reset nothing when a connection goes back to the pool (asyncpg still rolls back an open
    transaction): the store's statements never change session state (no SET, LISTEN, cursor or advisory
    lock; the migration lock has a connection of its own), and the default reset query is one more round
    trip per call, which halved get_batch's rate (bench/pgdriver.py)."""


class PostgresStore:
    """MetadataStore on one PostgreSQL database, through a pool of `min_size`..`max_size` connections."""

    def __init__(
        self,
        dsn: str,
        *,
        clock: Clock | None = None,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "overnight",
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, not {min_size}, {max_size}")
        self._dsn = dsn
        self._clock = clock if clock is not None else SystemClock()
        self._min_size, self._max_size = min_size, max_size
        self._server_settings = {**SERVER_SETTINGS, "application_name": application_name}
        self._pool: asyncpg.Pool | None = None
        self._running: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"PostgresStore({describe(self._dsn)!r})"

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError("the store is already open")
        await migrate(self._dsn, clock=self._clock)
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=self._server_settings,
                reset=_keep_session,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise unavailable(self._dsn, exc) from None
        self._pool = pool
        log.info("PostgreSQL store open at %s", describe(self._dsn))

    async def close(self) -> None:
        pool, self._pool = self._pool, None  # new calls fail at once; running ones finish first
        if pool is None:
            return
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await pool.close()

    async def _call(self, operation: Callable[[asyncpg.Pool], Awaitable[R]]) -> R:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the store is not open")
        # Shielded: a caller cancelled mid-call must not take the statement with it, or a write it
        # handed over (a group of results) would silently never happen.
        job = asyncio.ensure_future(operation(pool))
        self._running.add(job)
        job.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(job)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
            raise unavailable(self._dsn, exc, transient=True) from None

    async def _execute(self, query: str, *args: Any) -> int:
        return _changed(await self._call(lambda pool: pool.execute(query, *args)))

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(lambda pool: pool.fetch(query, *args))

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._call(lambda pool: pool.fetchrow(query, *args))

    async def _fetchval(self, query: str, *args: Any) -> Any:
        return await self._call(lambda pool: pool.fetchval(query, *args))

    # -- files -----------------------------------------------------------------------------------
    async def add_file(self, file: FileObject) -> None:
        await self._execute(sql.ADD_FILE, *(getattr(file, name) for name in sql.FILE_COLUMNS))

    async def begin_upload(self, file_id: str, started_at: int) -> None:
        await self._execute(sql.BEGIN_UPLOAD, file_id, started_at)

    async def end_upload(self, file_id: str) -> None:
        await self._execute(sql.END_UPLOAD, file_id)

    async def abandoned_uploads(self, started_before: int, limit: int) -> list[str]:
        return [row[0] for row in await self._fetch(sql.ABANDONED_UPLOADS, started_before, max(limit, 0))]

    async def get_file(self, project: str | None, file_id: str) -> FileObject | None:
        row = await self._fetchrow(sql.GET_FILE, file_id, project)
        return None if row is None else _file_from_row(row)

    async def list_files(
        self, project: str | None, *, purpose: str | None, after: str | None, limit: int, order: Order
    ) -> Page[FileObject]:
        query = sql.LIST_FILES[(purpose is not None, after is not None, order == "asc", project is None)]
        args = [value for value in (project, purpose, after) if value is not None]
        rows = await self._fetch(query, *args, max(limit, 0) + 1)
        return page([_file_from_row(row) for row in rows], limit)

    async def delete_file(self, project: str | None, file_id: str) -> bool:
        return await self._execute(sql.DELETE_FILE, file_id, project) > 0

    async def files_expired_before(self, now: int, limit: int) -> list[FileObject]:
        return [
            _file_from_row(row) for row in await self._fetch(sql.FILES_EXPIRED_BEFORE, now, max(limit, 0))
        ]

    async def file_in_use(self, file_id: str) -> bool:
        return bool(await self._fetchval(sql.FILE_IN_USE, file_id, _TERMINAL))

    # -- batches ---------------------------------------------------------------------------------
    async def add_batch(self, batch: Batch, event: Event | None = None) -> None:
        values = batch_values(batch)
        row = [values[column] for column in BATCH_COLUMNS]
        if event is None:
            await self._execute(sql.ADD_BATCH, *row)
        else:
            await self._call(outbox.with_event(event, sql.ADD_BATCH, *row))

    async def get_batch(self, batch_id: str, project: str | None = None) -> Batch | None:
        if project is None:
            row = await self._fetchrow(sql.GET_BATCH, batch_id)
        else:
            row = await self._fetchrow(sql.GET_PROJECT_BATCH, batch_id, project)
        return None if row is None else batch_from_row(row)

    async def list_batches(self, project: str | None, *, after: str | None, limit: int) -> Page[Batch]:
        args: list[str]
        if project is None:  # every project's
            query = usage_sql.LIST_ALL_BATCHES if after is None else usage_sql.LIST_ALL_BATCHES_AFTER
            args = [] if after is None else [after]
        elif after is None:
            query, args = sql.LIST_BATCHES, [project]
        else:
            query, args = sql.LIST_BATCHES_AFTER, [project, after]
        rows = await self._fetch(query, *args, max(limit, 0) + 1)
        return page([batch_from_row(row) for row in rows], limit)

    async def transition_batch(
        self, batch: Batch, expected: Collection[BatchStatus], event: Event | None = None
    ) -> bool:
        statuses = _values(expected)
        if not statuses:
            return False
        values = batch_values(batch)
        changes = [values[column] for column in TRANSITION_COLUMNS]
        if event is None:
            return await self._execute(sql.TRANSITION_BATCH, batch.id, *changes, statuses) > 0
        return await self._call(outbox.with_event(event, sql.TRANSITION_BATCH, batch.id, *changes, statuses))

    async def batches_in(self, statuses: Collection[BatchStatus]) -> list[Batch]:
        wanted = _values(statuses)
        if not wanted:
            return []
        return [batch_from_row(row) for row in await self._fetch(sql.BATCHES_IN, wanted)]

    async def count_batches(self) -> dict[BatchStatus, int]:
        return {BatchStatus(status): count for status, count in await self._fetch(sql.COUNT_BATCHES)}

    # -- background responses --------------------------------------------------------------------
    async def add_background_response(
        self, stored: StoredResponse, input_file: FileObject, hidden_files: Sequence[str]
    ) -> None:
        await self._call(background.add_background_response(stored, input_file, hidden_files))

    async def get_background_response(self, batch_id: str, project: str | None) -> StoredResponse | None:
        row = await self._fetchrow(background.GET, batch_id, project)
        return None if row is None else stored_from_row(tuple(row))

    async def delete_background_response(self, batch_id: str, project: str | None) -> bool:
        return await self._call(background.delete_background_response(batch_id, project))

    # -- usage and budgets -----------------------------------------------------------------------
    async def usage_by_day(self, project: str | None, start: int, end: int) -> list[DailyUsage]:
        if project is None:
            rows = await self._fetch(usage_sql.USAGE_BY_DAY, start, end)
        else:
            rows = await self._fetch(usage_sql.PROJECT_USAGE_BY_DAY, start, end, project)
        return in_order(daily_usage(row) for row in rows)

    async def enqueued_tokens(self, project: str) -> int:
        total: int = await self._fetchval(usage_sql.ENQUEUED_TOKENS, project, ENQUEUED_STATUSES)
        return total

    async def add_sync_usage(self, rows: Sequence[SyncUsage]) -> None:
        if not rows:
            return
        values = sync_rows.in_key_order(rows)

        async def add(pool: asyncpg.Pool) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(sync_sql.ADD_SYNC_USAGE, values)

        await self._call(add)

    async def sync_usage_by_day(self, project: str | None, start: int, end: int) -> list[SyncUsage]:
        if project is None:
            found = await self._fetch(sync_sql.SYNC_USAGE_BY_DAY, start, end)
        else:
            found = await self._fetch(sync_sql.PROJECT_SYNC_USAGE_BY_DAY, start, end, project)
        return sync_rows.in_order(sync_rows.sync_usage(row) for row in found)

    # -- per-project limits ----------------------------------------------------------------------
    async def stored_bytes(self, project: str, now: int) -> int:
        total: int = await self._fetchval(quotas_sql.STORED_BYTES, project, now)
        return total

    async def nth_latest_batch_created_at(self, project: str, since: int, n: int) -> int | None:
        found: int | None = await self._fetchval(quotas_sql.NTH_LATEST_BATCH, project, since, n - 1)
        return found

    # -- the webhooks' outbox --------------------------------------------------------------------
    async def claim_deliveries(
        self, worker: str, now: int, lease_s: int, limit: int, endpoints: Collection[str]
    ) -> list[Delivery]:
        if limit <= 0 or not endpoints:
            return []
        rows = await self._fetch(outbox.CLAIM_DELIVERIES, worker, now, lease_s, limit, sorted(set(endpoints)))
        return [outbox.delivery_from_row(row) for row in rows]

    async def finish_delivery(self, delivery: Delivery, now: int, status: int) -> bool:
        args = (delivery.event_id, delivery.endpoint, now, status)
        return await self._execute(outbox.FINISH_DELIVERY, *args) > 0

    async def retry_delivery(
        self,
        delivery: Delivery,
        worker: str,
        now: int,
        *,
        retry_at: int | None,
        status: int | None,
        error: str,
    ) -> bool:
        args = (delivery.event_id, delivery.endpoint, worker, now, retry_at, status, error)
        return await self._execute(outbox.RETRY_DELIVERY, *args) > 0

    async def pending_deliveries(self) -> int:
        count: int = await self._fetchval(outbox.PENDING_DELIVERIES)
        return count

    # -- leases ----------------------------------------------------------------------------------
    async def claim_batch(self, batch_id: str, worker: str, now: int, lease_s: int) -> bool:
        return await self._execute(sql.CLAIM_BATCH, batch_id, worker, now, lease_s) > 0

    async def release_batch(self, batch_id: str, worker: str) -> None:
        await self._execute(sql.RELEASE_BATCH, batch_id, worker)

    async def release_all_leases(self) -> None:
        await self._execute(sql.RELEASE_ALL_LEASES)
        await self._execute(sql.RELEASE_ALL_SHARD_LEASES)
        await self._execute(outbox.RELEASE_ALL_DELIVERY_LEASES)
        await self._execute(sql.RELEASE_ALL_SLOTS)
        await self._execute(sql.FORGET_ALL_SLOT_WORKERS)

    # -- shards ----------------------------------------------------------------------------------
    async def add_shards(self, shards: Sequence[Shard]) -> None:
        if shards:
            columns = zip(
                *(
                    (s.batch_id, s.shard_no, s.first_line, s.end_line, s.start_offset, s.count)
                    for s in shards
                ),
                strict=True,
            )
            await self._execute(sql.ADD_SHARDS, *(list(column) for column in columns))

    async def claim_shard(self, worker: str, now: int, lease_s: int) -> Shard | None:
        row = await self._fetchrow(sql.CLAIM_SHARD, worker, now, lease_s)
        return None if row is None else shard_from_row(row)

    async def renew_shard(self, batch_id: str, shard_no: int, worker: str, now: int, lease_s: int) -> bool:
        return await self._execute(sql.RENEW_SHARD, batch_id, shard_no, worker, now, lease_s) > 0

    async def finish_shard(self, batch_id: str, shard_no: int, worker: str, part: str | None) -> bool:
        return await self._execute(sql.FINISH_SHARD, batch_id, shard_no, worker, part) > 0

    async def release_shard(self, batch_id: str, shard_no: int, worker: str) -> None:
        await self._execute(sql.RELEASE_SHARD, batch_id, shard_no, worker)

    async def shards_of(self, batch_id: str) -> list[Shard]:
        return [shard_from_row(row) for row in await self._fetch(sql.SHARDS_OF, batch_id)]

    # -- slots -----------------------------------------------------------------------------------
    async def hold_slots(
        self, backend: str, worker: str, *, wants: bool, in_use: int, limit: int, now: int, lease_s: int
    ) -> tuple[int, int]:
        async def hold(pool: asyncpg.Pool) -> tuple[int, int]:
            async with pool.acquire() as conn, conn.transaction():
                if wants:
                    await conn.execute(sql.SLOT_WANTED, backend, worker, now + lease_s)
                else:
                    await conn.execute(sql.SLOT_UNWANTED, backend, worker)
                live = [row[0] for row in await conn.fetch(sql.SLOT_WORKERS, backend, now)]
                target = fair_share(limit, live, worker) if wants else 0
                await conn.execute(sql.SLOTS_PAST_LIMIT, backend, worker, limit)
                held = [row[0] for row in await conn.fetch(sql.SLOTS_HELD, backend, worker)]
                keep = max(target, min(len(held), in_use))  # a slot in use goes back once it is free
                if held[keep:]:
                    await conn.execute(sql.SLOTS_GIVE_BACK, backend, held[keep:])
                await conn.execute(sql.SLOTS_RENEW, backend, worker, now + lease_s)
                count = min(len(held), keep)
                if count < target:
                    await conn.execute(sql.SLOTS_CREATE, backend, limit)
                    taken = await conn.execute(
                        sql.SLOTS_TAKE, backend, worker, limit, now, now + lease_s, target - count
                    )
                    count += _changed(taken)
                return count, target

        return await self._call(hold)

    # -- statistics: progress samples, error groups, backend reports ---------------------------
    async def record_progress(self, batch_id: str, sample: Sample) -> None:
        await self._execute(stats.ADD_SAMPLE, batch_id, sample.at, sample.completed, sample.failed)

    async def progress_samples(self, batch_id: str) -> list[Sample]:
        return [sample_from_row(row) for row in await self._fetch(stats.SAMPLES, batch_id)]

    async def error_groups(self, batch_id: str) -> list[ErrorGroup]:
        return [error_group(*row) for row in await self._fetch(stats.ERROR_GROUPS, batch_id)]

    async def report_backends(self, statuses: Sequence[BackendStatus]) -> None:
        if statuses:
            await self._call(lambda pool: stats.report_backends(pool, statuses))

    async def backend_reports(self, since: int) -> list[BackendStatus]:
        return [backend_from_row(row) for row in await self._fetch(stats.BACKEND_REPORTS, since)]

    # -- results ---------------------------------------------------------------------------------
    async def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        if not rows:
            return 0
        columns = _result_columns(rows)
        errors = stats.error_columns(rows)
        if errors is None:
            new: int = await self._fetchval(sql.RECORD_RESULTS, batch_id, *columns)
        else:
            new = await self._fetchval(sql.RECORD_RESULTS_COUNTING_ERRORS, batch_id, *columns, *errors)
        return new

    async def finished_lines(self, batch_id: str, lines: LineRange = ALL_LINES) -> set[int]:
        return {row[0] for row in await self._fetch(sql.FINISHED_LINES, batch_id, *lines)}

    async def result_lines(
        self, batch_id: str, kinds: Collection[ResultKind], lines: LineRange = ALL_LINES
    ) -> AsyncIterator[bytes]:
        wanted = sorted({ResultKind(kind).value for kind in kinds})
        if not wanted:
            return
        after_line, end_line = lines[0] - 1, lines[1]
        while True:
            rows = await self._fetch(
                sql.RESULT_LINES_PAGE, batch_id, after_line, wanted, RESULTS_PAGE, end_line
            )
            if rows:
                yield b"\n".join([row[1] for row in rows]) + b"\n"
            if len(rows) < RESULTS_PAGE:
                return
            after_line = rows[-1][0]

    async def delete_results(self, batch_id: str) -> None:
        while await self._execute(sql.DELETE_SOME_RESULTS, batch_id, DELETE_CHUNK) == DELETE_CHUNK:
            pass

    async def ended_batches_with_results(self, statuses: Collection[BatchStatus], limit: int) -> list[str]:
        wanted = _values(statuses)
        if not wanted:
            return []
        return [row[0] for row in await self._fetch(sql.ENDED_BATCHES_WITH_RESULTS, wanted, max(limit, 0))]

    # -- results while a batch runs --------------------------------------------------------------
    async def recorded_results(
        self, batch_id: str, kinds: Collection[ResultKind], *, after_seq: int = 0, skip: int = 0, limit: int
    ) -> list[tuple[int, bytes]]:
        wanted = sorted({ResultKind(kind).value for kind in kinds})
        if not wanted or limit <= 0:
            return []
        rows = await self._fetch(streaming.RECORDED_RESULTS, batch_id, after_seq, wanted, limit, max(skip, 0))
        return [(row[0], bytes(row[1])) for row in rows]

    async def claim_result_order(self, batch_id: str, order: ResultOrder) -> ResultOrder | None:
        found = await self._fetchval(streaming.SET_ORDER, batch_id, ResultOrder(order).value)
        if found is None:
            found = await self._fetchval(streaming.GET_ORDER, batch_id)
        return None if found is None else ResultOrder(found)

    # -- Idempotency-Key -------------------------------------------------------------------------
    async def remember_key(self, record: KeyRecord) -> KeyRecord:
        await self._execute(streaming.ADD_KEY, *streaming.key_values(record))
        found = await self.get_key(record.project, record.key)
        return record if found is None else found  # None only if swept between the two statements

    async def get_key(self, project: str, key: str) -> KeyRecord | None:
        row = await self._fetchrow(streaming.GET_KEY, project, key)
        return None if row is None else streaming.key_from_row(row)

    async def key_done(self, project: str, key: str, object_id: str, now: int) -> None:
        await self._execute(streaming.KEY_DONE, project, key, object_id, now)

    async def forget_key(self, project: str, key: str, object_id: str) -> bool:
        return await self._execute(streaming.FORGET_KEY, project, key, object_id) > 0

    async def forget_keys_before(self, created_before: int) -> int:
        return await self._execute(streaming.FORGET_OLD_KEYS, created_before)

    # -- API keys --------------------------------------------------------------------------------
    async def add_api_key(self, key: StoredApiKey) -> None:
        await self._execute(keys_sql.ADD, *key_values(key))

    async def api_key_by_hash(self, secret_hash: str) -> StoredApiKey | None:
        row = await self._fetchrow(keys_sql.BY_HASH, secret_hash)
        return None if row is None else key_from_row(tuple(row))

    async def list_api_keys(self) -> list[StoredApiKey]:
        return [key_from_row(tuple(row)) for row in await self._fetch(keys_sql.LIST)]

    async def revoke_api_key(self, key_id: str, now: int) -> StoredApiKey | None:
        row = await self._fetchrow(keys_sql.REVOKE, key_id, now)
        return None if row is None else key_from_row(tuple(row))

    async def any_api_keys(self) -> bool:
        return bool(await self._fetchval(keys_sql.ANY))
