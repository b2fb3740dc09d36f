"""The metadata store on SQLite: one connection, owned by one thread, so writes never contend."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from overnight.domain.api_keys import StoredApiKey
from overnight.domain.background import StoredResponse
from overnight.domain.clock import Clock, SystemClock
from overnight.domain.events import Delivery, Event
from overnight.domain.idempotency import KeyRecord
from overnight.domain.lifecycle import TERMINAL
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
from overnight.store import schema
from overnight.store import sqlite_background as background
from overnight.store import sqlite_keys as api_keys
from overnight.store import sqlite_leases as leases
from overnight.store import sqlite_outbox as outbox
from overnight.store import sqlite_quotas as quotas
from overnight.store import sqlite_results as results
from overnight.store import sqlite_shards as shards
from overnight.store import sqlite_slots as slots
from overnight.store import sqlite_stats as stats
from overnight.store import sqlite_streaming as streaming
from overnight.store import sqlite_sync_usage as sync_usage
from overnight.store import sqlite_usage as usage
from overnight.store.background_sql import VISIBLE_BATCH, VISIBLE_FILE
from overnight.store.base import ALL_LINES, LineRange, Order
from overnight.store.rows import (
    BATCH_COLUMNS,
    TRANSITION_COLUMNS,
    batch_from_row,
    batch_values,
    page,
)
from overnight.store.sqlite_checkpoint import BACKSTOP_PAGES, WalCheckpointer
from overnight.store.sqlite_tx import placeholders, transaction

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

RESULTS_PAGE = 5000
# rows per statement, so other calls (an API read) wait behind a short delete only: 1,000 rows held the
# store's thread 15-60 ms on a busy 2-core machine, which the API's p99 met while an ended batch was cleaned
DELETE_CHUNK = 250
BUSY_TIMEOUT_MS = 5000

# -- connection and schema -----------------------------------------------------------------------


def _applied_versions(conn: sqlite3.Connection) -> set[int]:
    return {version for (version,) in conn.execute("SELECT version FROM schema_migrations")}


def _migrate(conn: sqlite3.Connection, migrations: Sequence[schema.Migration], now: int) -> list[int]:
    """Apply the migrations the database lacks, each in its own transaction; the versions applied."""
    conn.execute(schema.SCHEMA_MIGRATIONS_DDL)
    schema.check_known(_applied_versions(conn), migrations)
    applied = []
    for migration in migrations:
        with transaction(conn):
            if migration.version in _applied_versions(conn):  # also when another process just did it
                continue
            for statement in schema.split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (migration.version, now)
            )
            applied.append(migration.version)
    return applied


def _migrate_file(path: Path, now: int) -> list[int]:
    conn = _connect(path)
    try:
        return _migrate(conn, schema.load_migrations(), now)
    finally:
        conn.close()


async def migrate(path: Path, now: int) -> list[int]:
    """Bring the database file's schema up to date (`overnight migrate`); the versions applied."""
    return await asyncio.to_thread(_migrate_file, path, now)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=256)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _leave_checkpoints_to_the_checkpointer(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")  # store/sqlite_checkpoint.py


def _connect_and_migrate(path: Path, migrations: Sequence[schema.Migration], now: int) -> sqlite3.Connection:
    conn = _connect(path)
    try:
        _migrate(conn, migrations, now)
    except BaseException:
        conn.close()
        raise
    return conn


# -- rows <-> values -------------------------------------------------------------------------------

_FILE_COLUMNS = tuple(field.name for field in dataclasses.fields(FileObject))
_FILE_SELECT = f"SELECT {', '.join(_FILE_COLUMNS)} FROM files"
_OF_PROJECT = "project = COALESCE(?, project)"  # a project of None: any project (an admin's look-up)

_BATCH_SELECT = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches"
_BATCH_INSERT = (
    f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)}) VALUES ({', '.join('?' for _ in BATCH_COLUMNS)})"
)
_TRANSITION_SET = ", ".join(f"{column} = ?" for column in TRANSITION_COLUMNS)

# -- the operations, each run on the store's thread ------------------------------------------------


def _add_file(conn: sqlite3.Connection, file: FileObject) -> None:
    values = tuple(getattr(file, name) for name in _FILE_COLUMNS)
    updates = ", ".join(f"{name} = excluded.{name}" for name in _FILE_COLUMNS if name != "id")
    with transaction(conn):
        conn.execute(
            f"INSERT INTO files ({', '.join(_FILE_COLUMNS)}) VALUES ({placeholders(len(values))})"
            f" ON CONFLICT (id) DO UPDATE SET {updates}",
            values,
        )
        conn.execute("DELETE FROM uploads WHERE file_id = ?", (file.id,))


def _begin_upload(conn: sqlite3.Connection, file_id: str, started_at: int) -> None:
    conn.execute(
        "INSERT INTO uploads (file_id, started_at) VALUES (?, ?) ON CONFLICT (file_id) DO NOTHING",
        (file_id, started_at),
    )


def _end_upload(conn: sqlite3.Connection, file_id: str) -> None:
    conn.execute("DELETE FROM uploads WHERE file_id = ?", (file_id,))


def _abandoned_uploads(conn: sqlite3.Connection, started_before: int, limit: int) -> list[str]:
    sql = "SELECT file_id FROM uploads WHERE started_at < ? ORDER BY started_at, file_id LIMIT ?"
    return [file_id for (file_id,) in conn.execute(sql, (started_before, max(limit, 0)))]


def _get_file(conn: sqlite3.Connection, project: str | None, file_id: str) -> FileObject | None:
    row = conn.execute(f"{_FILE_SELECT} WHERE id = ? AND {_OF_PROJECT}", (file_id, project)).fetchone()
    return None if row is None else FileObject(*row)


def _list_files(
    conn: sqlite3.Connection,
    project: str | None,
    purpose: str | None,
    after: str | None,
    limit: int,
    order: Order,
) -> Page[FileObject]:
    ascending = order == "asc"
    clauses = [VISIBLE_FILE]
    params: list[Any] = []
    if project is not None:  # None: every project's
        clauses.append("project = ?")
        params.append(project)
    if purpose is not None:
        clauses.append("purpose = ?")
        params.append(purpose)
    if after is not None:
        clauses.append("id > ?" if ascending else "id < ?")
        params.append(after)
    direction = "ASC" if ascending else "DESC"
    sql = f"{_FILE_SELECT} WHERE {' AND '.join(clauses)} ORDER BY id {direction} LIMIT ?"
    rows = conn.execute(sql, (*params, max(limit, 0) + 1)).fetchall()
    return page([FileObject(*row) for row in rows], limit)


def _delete_file(conn: sqlite3.Connection, project: str | None, file_id: str) -> bool:
    return conn.execute(f"DELETE FROM files WHERE id = ? AND {_OF_PROJECT}", (file_id, project)).rowcount > 0


def _files_expired_before(conn: sqlite3.Connection, now: int, limit: int) -> list[FileObject]:
    sql = f"{_FILE_SELECT} WHERE expires_at <= ? ORDER BY expires_at, id LIMIT ?"
    return [FileObject(*row) for row in conn.execute(sql, (now, max(limit, 0)))]


def _file_in_use(conn: sqlite3.Connection, file_id: str) -> bool:
    terminal = sorted(status.value for status in TERMINAL)
    live = f"status NOT IN ({placeholders(len(terminal))})"
    sql = f"SELECT 1 FROM batches WHERE input_file_id = ? AND {live} LIMIT 1"
    return conn.execute(sql, (file_id, *terminal)).fetchone() is not None


def _add_batch(conn: sqlite3.Connection, batch: Batch) -> None:
    values = batch_values(batch)
    conn.execute(_BATCH_INSERT, tuple(values[column] for column in BATCH_COLUMNS))


def _get_batch(conn: sqlite3.Connection, batch_id: str, project: str | None) -> Batch | None:
    if project is None:
        row = conn.execute(f"{_BATCH_SELECT} WHERE id = ?", (batch_id,)).fetchone()
    else:
        row = conn.execute(f"{_BATCH_SELECT} WHERE id = ? AND project = ?", (batch_id, project)).fetchone()
    return None if row is None else batch_from_row(row)


def _list_batches(
    conn: sqlite3.Connection, project: str | None, after: str | None, limit: int
) -> Page[Batch]:
    clauses, params = [VISIBLE_BATCH], []
    if project is not None:  # None: every project's
        clauses.append("project = ?")
        params.append(project)
    if after is not None:
        clauses.append("id < ?")
        params.append(after)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"{_BATCH_SELECT}{where} ORDER BY id DESC LIMIT ?"
    rows = conn.execute(sql, (*params, max(limit, 0) + 1)).fetchall()
    return page([batch_from_row(row) for row in rows], limit)


def _transition_batch(conn: sqlite3.Connection, batch: Batch, expected: list[str]) -> bool:
    values = batch_values(batch)
    sql = f"UPDATE batches SET {_TRANSITION_SET} WHERE id = ? AND status IN ({placeholders(len(expected))})"
    params = (*(values[column] for column in TRANSITION_COLUMNS), batch.id, *expected)
    return conn.execute(sql, params).rowcount > 0


def _batches_in(conn: sqlite3.Connection, statuses: list[str]) -> list[Batch]:
    sql = f"{_BATCH_SELECT} WHERE status IN ({placeholders(len(statuses))}) ORDER BY id"
    return [batch_from_row(row) for row in conn.execute(sql, statuses)]


def _ended_batches_with_results(conn: sqlite3.Connection, statuses: list[str], limit: int) -> list[str]:
    sql = (
        f"SELECT id FROM batches WHERE status IN ({placeholders(len(statuses))})"
        " AND EXISTS (SELECT 1 FROM results WHERE results.batch_id = batches.id) ORDER BY id LIMIT ?"
    )
    return [batch_id for (batch_id,) in conn.execute(sql, (*statuses, limit))]


def _count_batches(conn: sqlite3.Connection) -> dict[BatchStatus, int]:
    rows = conn.execute("SELECT status, count(*) FROM batches GROUP BY status")
    return {BatchStatus(status): count for status, count in rows}


# -- the store -----------------------------------------------------------------------------------


class SqliteStore:
    """MetadataStore on one SQLite database file (WAL), every statement run on one dedicated thread."""

    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self._path = path
        self._clock = clock if clock is not None else SystemClock()
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._checkpoints: WalCheckpointer | None = None

    async def open(self) -> None:
        if self._conn is not None:
            raise RuntimeError("the store is already open")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overnight-sqlite")
        loop = asyncio.get_running_loop()
        try:
            migrations, now = schema.load_migrations(), int(self._clock.now())
            conn = await loop.run_in_executor(executor, _connect_and_migrate, self._path, migrations, now)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor, self._conn = executor, conn
        await self._call(_leave_checkpoints_to_the_checkpointer)
        self._checkpoints = WalCheckpointer(self._path)
        await self._checkpoints.start()

    async def close(self) -> None:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            return
        if self._checkpoints is not None:
            await self._checkpoints.stop()
            self._checkpoints = None
        self._conn = self._executor = None  # new calls fail at once; queued ones run before the close
        await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)

    async def _call(
        self, operation: Callable[Concatenate[sqlite3.Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        conn, executor = self._conn, self._executor
        if conn is None or executor is None:
            raise RuntimeError("the store is not open")
        job = functools.partial(operation, conn, *args, **kwargs)
        # Shielded: a caller cancelled while its job waits for the thread must not take the job
        # with it, or a write it handed over (a group of results) would silently never happen.
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(executor, job))

    # -- files -----------------------------------------------------------------------------------
    async def add_file(self, file: FileObject) -> None:
        await self._call(_add_file, file)

    async def begin_upload(self, file_id: str, started_at: int) -> None:
        await self._call(_begin_upload, file_id, started_at)

    async def end_upload(self, file_id: str) -> None:
        await self._call(_end_upload, file_id)

    async def abandoned_uploads(self, started_before: int, limit: int) -> list[str]:
        return await self._call(_abandoned_uploads, started_before, limit)

    async def get_file(self, project: str | None, file_id: str) -> FileObject | None:
        return await self._call(_get_file, project, file_id)

    async def list_files(
        self, project: str | None, *, purpose: str | None, after: str | None, limit: int, order: Order
    ) -> Page[FileObject]:
        return await self._call(_list_files, project, purpose, after, limit, order)

    async def delete_file(self, project: str | None, file_id: str) -> bool:
        return await self._call(_delete_file, project, file_id)

    async def files_expired_before(self, now: int, limit: int) -> list[FileObject]:
        return await self._call(_files_expired_before, now, limit)

    async def file_in_use(self, file_id: str) -> bool:
        return await self._call(_file_in_use, file_id)

    # -- batches ---------------------------------------------------------------------------------
    async def add_batch(self, batch: Batch, event: Event | None = None) -> None:
        if event is None:
            await self._call(_add_batch, batch)
            return

        def added(conn: sqlite3.Connection) -> bool:
            _add_batch(conn, batch)
            return True

        await self._call(outbox.with_event, event, added)

    async def get_batch(self, batch_id: str, project: str | None = None) -> Batch | None:
        return await self._call(_get_batch, batch_id, project)

    async def list_batches(self, project: str | None, *, after: str | None, limit: int) -> Page[Batch]:
        return await self._call(_list_batches, project, after, limit)

    async def transition_batch(
        self, batch: Batch, expected: Collection[BatchStatus], event: Event | None = None
    ) -> bool:
        statuses = sorted({BatchStatus(status).value for status in expected})
        if not statuses:
            return False
        if event is None:
            return await self._call(_transition_batch, batch, statuses)
        return await self._call(
            outbox.with_event, event, lambda conn: _transition_batch(conn, batch, statuses)
        )

    async def batches_in(self, statuses: Collection[BatchStatus]) -> list[Batch]:
        wanted = sorted({BatchStatus(status).value for status in statuses})
        if not wanted:
            return []
        return await self._call(_batches_in, wanted)

    async def count_batches(self) -> dict[BatchStatus, int]:
        return await self._call(_count_batches)

    # -- background responses --------------------------------------------------------------------
    async def add_background_response(
        self, stored: StoredResponse, input_file: FileObject, hidden_files: Sequence[str]
    ) -> None:
        await self._call(background.add_background_response, stored, input_file, hidden_files)

    async def get_background_response(self, batch_id: str, project: str | None) -> StoredResponse | None:
        return await self._call(background.get_background_response, batch_id, project)

    async def delete_background_response(self, batch_id: str, project: str | None) -> bool:
        return await self._call(background.delete_background_response, batch_id, project)

    # -- usage and budgets -----------------------------------------------------------------------
    async def usage_by_day(self, project: str | None, start: int, end: int) -> list[DailyUsage]:
        return await self._call(usage.usage_by_day, project, start, end)

    async def enqueued_tokens(self, project: str) -> int:
        return await self._call(usage.enqueued_tokens, project)

    async def add_sync_usage(self, rows: Sequence[SyncUsage]) -> None:
        if rows:
            await self._call(sync_usage.add_sync_usage, rows)

    async def sync_usage_by_day(self, project: str | None, start: int, end: int) -> list[SyncUsage]:
        return await self._call(sync_usage.sync_usage_by_day, project, start, end)

    # -- per-project limits ----------------------------------------------------------------------
    async def stored_bytes(self, project: str, now: int) -> int:
        return await self._call(quotas.stored_bytes, project, now)

    async def nth_latest_batch_created_at(self, project: str, since: int, n: int) -> int | None:
        return await self._call(quotas.nth_latest_batch_created_at, project, since, n)

    # -- the webhooks' outbox --------------------------------------------------------------------
    async def claim_deliveries(
        self, worker: str, now: int, lease_s: int, limit: int, endpoints: Collection[str]
    ) -> list[Delivery]:
        names = sorted(set(endpoints))
        return await self._call(outbox.claim_deliveries, worker, now, lease_s, limit, names)

    async def finish_delivery(self, delivery: Delivery, now: int, status: int) -> bool:
        return await self._call(outbox.finish_delivery, delivery.event_id, delivery.endpoint, now, status)

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
        return await self._call(
            outbox.retry_delivery, delivery.event_id, delivery.endpoint, worker, now, retry_at, status, error
        )

    async def pending_deliveries(self) -> int:
        return await self._call(outbox.pending_deliveries)

    # -- leases ----------------------------------------------------------------------------------
    async def claim_batch(self, batch_id: str, worker: str, now: int, lease_s: int) -> bool:
        return await self._call(leases.claim_batch, batch_id, worker, now, lease_s)

    async def release_batch(self, batch_id: str, worker: str) -> None:
        await self._call(leases.release_batch, batch_id, worker)

    async def release_all_leases(self) -> None:
        await self._call(leases.release_all_leases)
        await self._call(shards.release_all_shard_leases)
        await self._call(outbox.release_all_delivery_leases)
        await self._call(slots.release_all_slots)

    # -- shards ----------------------------------------------------------------------------------
    async def add_shards(self, planned: Sequence[Shard]) -> None:
        if planned:
            await self._call(shards.add_shards, planned)

    async def claim_shard(self, worker: str, now: int, lease_s: int) -> Shard | None:
        return await self._call(shards.claim_shard, worker, now, lease_s)

    async def renew_shard(self, batch_id: str, shard_no: int, worker: str, now: int, lease_s: int) -> bool:
        return await self._call(shards.renew_shard, batch_id, shard_no, worker, now, lease_s)

    async def finish_shard(self, batch_id: str, shard_no: int, worker: str, part: str | None) -> bool:
        return await self._call(shards.finish_shard, batch_id, shard_no, worker, part)

    async def release_shard(self, batch_id: str, shard_no: int, worker: str) -> None:
        await self._call(shards.release_shard, batch_id, shard_no, worker)

    async def shards_of(self, batch_id: str) -> list[Shard]:
        return await self._call(shards.shards_of, batch_id)

    # -- slots -----------------------------------------------------------------------------------
    async def hold_slots(
        self, backend: str, worker: str, *, wants: bool, in_use: int, limit: int, now: int, lease_s: int
    ) -> tuple[int, int]:
        return await self._call(slots.hold_slots, backend, worker, wants, in_use, limit, now, lease_s)

    # -- statistics: progress samples, error groups, backend reports ---------------------------
    async def record_progress(self, batch_id: str, sample: Sample) -> None:
        await self._call(stats.record_progress, batch_id, sample)

    async def progress_samples(self, batch_id: str) -> list[Sample]:
        return await self._call(stats.progress_samples, batch_id)

    async def error_groups(self, batch_id: str) -> list[ErrorGroup]:
        return await self._call(stats.error_groups, batch_id)

    async def report_backends(self, statuses: Sequence[BackendStatus]) -> None:
        if statuses:
            await self._call(stats.report_backends, statuses)

    async def backend_reports(self, since: int) -> list[BackendStatus]:
        return await self._call(stats.backend_reports, since)

    # -- results ---------------------------------------------------------------------------------
    async def record_results(self, batch_id: str, rows: Sequence[ResultRow]) -> int:
        if not rows:
            return 0
        return await self._call(results.record_results, batch_id, rows)

    async def finished_lines(self, batch_id: str, lines: LineRange = ALL_LINES) -> set[int]:
        return await self._call(results.finished_lines, batch_id, lines)

    async def result_lines(
        self, batch_id: str, kinds: Collection[ResultKind], lines: LineRange = ALL_LINES
    ) -> AsyncIterator[bytes]:
        wanted = sorted({ResultKind(k).value for k in kinds})
        if not wanted:
            return
        after_line, end_line = lines[0] - 1, lines[1]
        while True:
            count, after_line, chunk = await self._call(
                results.lines_page, batch_id, wanted, after_line, end_line, RESULTS_PAGE
            )
            if chunk:
                yield chunk
            if count < RESULTS_PAGE:
                return

    async def delete_results(self, batch_id: str) -> None:
        while await self._call(results.delete_some_results, batch_id, DELETE_CHUNK) == DELETE_CHUNK:
            pass

    async def ended_batches_with_results(self, statuses: Collection[BatchStatus], limit: int) -> list[str]:
        wanted = sorted({BatchStatus(status).value for status in statuses})
        if not wanted:
            return []
        return await self._call(_ended_batches_with_results, wanted, limit)

    # -- results while a batch runs --------------------------------------------------------------
    async def recorded_results(
        self, batch_id: str, kinds: Collection[ResultKind], *, after_seq: int = 0, skip: int = 0, limit: int
    ) -> list[tuple[int, bytes]]:
        wanted = sorted({ResultKind(kind).value for kind in kinds})
        if not wanted or limit <= 0:
            return []
        return await self._call(streaming.recorded_results, batch_id, wanted, after_seq, skip, limit)

    async def claim_result_order(self, batch_id: str, order: ResultOrder) -> ResultOrder | None:
        found = await self._call(streaming.claim_result_order, batch_id, ResultOrder(order).value)
        return None if found is None else ResultOrder(found)

    # -- Idempotency-Key -------------------------------------------------------------------------
    async def remember_key(self, record: KeyRecord) -> KeyRecord:
        return await self._call(streaming.remember_key, record)

    async def get_key(self, project: str, key: str) -> KeyRecord | None:
        return await self._call(streaming.get_key, project, key)

    async def key_done(self, project: str, key: str, object_id: str, now: int) -> None:
        await self._call(streaming.key_done, project, key, object_id, now)

    async def forget_key(self, project: str, key: str, object_id: str) -> bool:
        return await self._call(streaming.forget_key, project, key, object_id)

    async def forget_keys_before(self, created_before: int) -> int:
        return await self._call(streaming.forget_keys_before, created_before)

    # -- API keys --------------------------------------------------------------------------------
    async def add_api_key(self, key: StoredApiKey) -> None:
        await self._call(api_keys.add_api_key, key)

    async def api_key_by_hash(self, secret_hash: str) -> StoredApiKey | None:
        return await self._call(api_keys.api_key_by_hash, secret_hash)

    async def list_api_keys(self) -> list[StoredApiKey]:
        return await self._call(api_keys.list_api_keys)

    async def revoke_api_key(self, key_id: str, now: int) -> StoredApiKey | None:
        return await self._call(api_keys.revoke_api_key, key_id, now)

    async def any_api_keys(self) -> bool:
        return await self._call(api_keys.any_api_keys)
