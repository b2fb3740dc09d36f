"""7. Scale-out stores: the dispatch batch on one `overnight serve` on PostgreSQL + S3, against SQLite + disk.

Both runs are the dispatch scenario's batch (the same file, nginx answering at once, the same concurrency),
one fresh server each: first on SQLite and the data folder (the baseline), then on a database made for the
run on tests/support/postgres.py's server (migrated with `overnight migrate`, dropped at the end) and a
SeaweedFS `weed mini` started for the run (tests/support/seaweed.py), its folder removed at the end.

While each batch runs a sampler reads, every SAMPLE_S, the CPU seconds of the server, nginx, SeaweedFS,
the PostgreSQL backends of the run's database (found anew each time in pg_stat_activity: the server's pool
opens connections as it needs them) and the database's pg_stat_database counters; the dispatch phase's
figures are those counters read at the phase's ends (from the server's log), by interpolation.
PostgreSQL publishes a backend's counters when a transaction ends at most once a second, so a reading
trails by up to a second: the dispatch phase's counts are +- one second of traffic at each end. The
"start -> stop" counts are exact: read before the server starts and after it has stopped (a backend
publishes all it has when it exits), so they also hold the server's start and shutdown.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .client import BatchRun, log_events, run_batch
from .dispatch import PHASES
from .nginx import Nginx
from .procs import Overnight, cpu_seconds, machine_busy_seconds
from .report import Section, cores, ms, rate, ratio
from .workload import write_chat_file

if TYPE_CHECKING:
    import asyncpg

    from support.postgres import Server
    from support.seaweed import SeaweedS3

GOAL = 0.7
SAMPLE_S = 0.1
BUCKET = "overnight-bench"
BLOB_PREFIX = "scaleout"
LOCAL, REMOTE = "SQLite + disk", "PostgreSQL + S3"
SERVER, BACKENDS, SHARED, SEAWEED = "overnight", "postgres backends", "postgres shared", "seaweedfs"
LOOP = " event loop thread"  # report.cores() shows "<group> event loop thread" beside its group
STORE_VARIABLES = (
    "OVERNIGHT_DATABASE_URL",
    "OVERNIGHT_BLOB_URL",
    "OVERNIGHT_S3_ENDPOINT_URL",
    "OVERNIGHT_S3_REGION",
)
COUNTERS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)
WAL = "wal_bytes"  # the server's WAL insert position: live, but the whole server's (all its databases)
_READ = f"""
SELECT {", ".join(f"d.{name}" for name in COUNTERS)},
       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8 AS {WAL},
       ARRAY(SELECT a.pid FROM pg_stat_activity a WHERE a.datname = d.datname) AS pids,
       (SELECT count(*) FROM pg_stat_activity a WHERE a.backend_type = 'client backend'
          AND a.datname <> d.datname AND a.state <> 'idle' AND a.pid <> pg_backend_pid()) AS others
FROM pg_stat_database d WHERE d.datname = $1
"""
_SHARED = "SELECT pid FROM pg_stat_activity WHERE datname IS NULL"  # walwriter, checkpointer, launchers
LAG_S = 1.0  # PostgreSQL publishes a busy backend's counts at most once a second (PGSTAT_MIN_INTERVAL)
SETTLE_S = 3.0  # how long to wait for the counters to stop moving once the server has stopped


# -- PostgreSQL's view of one database ----------------------------------------------------------------


@dataclass
class Reading:
    counters: dict[str, float]  # COUNTERS (the database's) and WAL (the server's)
    pids: list[int]  # the backends connected to the database
    others: int  # client backends of other databases busy at that moment

    def database(self) -> dict[str, float]:
        return {name: self.counters[name] for name in COUNTERS}


class Database:
    """The run's database and a connection to the server's admin database (not the measured one, so its
    own queries are not counted) that reads the measured database's counters and its backends' pids."""

    def __init__(self, found: Server, name: str, conn: asyncpg.Connection) -> None:
        self.found = found
        self.name = name
        self.dsn = found.dsn(name)
        self._conn = conn

    async def read(self) -> Reading:
        row = await self._conn.fetchrow(_READ, self.name)
        if row is None:
            raise RuntimeError(f"database {self.name} is not in pg_stat_database")
        counters = {name: float(row[name]) for name in (*COUNTERS, WAL)}
        return Reading(counters, list(row["pids"]), int(row["others"]))

    async def shared_pids(self) -> list[int]:
        return [int(row["pid"]) for row in await self._conn.fetch(_SHARED)]

    async def version(self) -> str:
        return str(await self._conn.fetchval("SHOW server_version")).split()[0]

    async def settled(self) -> dict[str, float]:
        """The database's counters once they stop moving (with nothing connected to it they are final)."""
        counters = (await self.read()).database()
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            again = await self.read()
            if again.database() == counters and not again.pids:
                break
            counters = again.database()
        return counters


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[Database]:
    """A new empty database on the test server (dropped at the end, whatever happens)."""
    import asyncpg

    from support.postgres import CONNECT_TIMEOUT_S, server

    found = await asyncio.to_thread(server)
    if urlsplit(found.admin_dsn).hostname is None:
        raise RuntimeError(
            f"the {found.kind} PostgreSQL server answers only on a Unix socket, which Overnight's "
            "database_url cannot name (it needs a host): set OVERNIGHT_TEST_DATABASE_URL to a server on TCP"
        )
    conn = await asyncpg.connect(found.admin_dsn, timeout=CONNECT_TIMEOUT_S)
    try:
        name = await found.create_database()
        try:
            yield Database(found, name, conn)
        finally:
            await found.drop_database(name)
    finally:
        try:
            await conn.close(timeout=5)
        except Exception:
            conn.terminate()


# -- the sampler --------------------------------------------------------------------------------------


@dataclass
class Point:
    t: float  # Unix time
    cpu: dict[str, float]  # cumulative CPU seconds per group, "bench client" and "everything" included
    db: dict[str, float]  # cumulative pg_stat_database counters (none without a database)


@dataclass
class Sampler:
    """Reads the counters every SAMPLE_S while in the block (`async with`); `at(t)` interpolates."""

    pids: dict[str, list[int]]
    db: Database | None = None
    # groups of one process each whose main thread (event loop) is read too
    main_thread_of: str | tuple[str, ...] = SERVER
    points: list[Point] = field(default_factory=list)
    backends_seen: set[int] = field(default_factory=set)
    backends_local: bool = False  # whether any backend was a process on this machine
    others_busy: int = 0  # the most client backends of other databases seen busy at once
    _backends: dict[int, tuple[float, float]] = field(default_factory=dict)  # pid -> (counted from, last)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _read(self) -> Point:
        t = time.time()
        cpu = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        cpu["bench client"] = time.process_time()
        cpu["everything"] = machine_busy_seconds()
        for name in (self.main_thread_of,) if isinstance(self.main_thread_of, str) else self.main_thread_of:
            main = self.pids[name][0]
            cpu[name + LOOP] = cpu_seconds(main, main)
        counters: dict[str, float] = {}
        if self.db is not None:
            reading = await self.db.read()
            cpu[BACKENDS] = self._backend_seconds(reading.pids)
            counters = reading.counters
            self.others_busy = max(self.others_busy, reading.others)
        return Point(t, cpu, counters)

    def _backend_seconds(self, pids: list[int]) -> float:
        """CPU seconds the database's backends have used since the first reading: a backend already
        there then is counted from then, one born since from its start, one gone by its last reading."""
        first = not self.points
        for pid in pids:
            used = cpu_seconds(pid)
            self.backends_local = self.backends_local or os.path.exists(f"/proc/{pid}")
            since, last = self._backends.get(pid, (used if first else 0.0, 0.0))
            self._backends[pid] = (since, max(used, last))  # cpu_seconds says 0 once it has exited
        self.backends_seen.update(pids)
        return sum(last - since for since, last in self._backends.values())

    async def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_S)
            self.points.append(await self._read())

    async def __aenter__(self) -> Sampler:
        self.points.append(await self._read())
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._task is not None:
            if error is None:
                await self._task  # its last reading is the end
            else:
                self._task.cancel()
                await asyncio.wait([self._task], timeout=5)

    @property
    def start(self) -> float:
        return self.points[0].t

    @property
    def end(self) -> float:
        return self.points[-1].t

    def at(self, t: float) -> Point:
        points = self.points
        i = bisect.bisect_right([p.t for p in points], t)
        if i == 0:
            return points[0]
        if i == len(points):
            return points[-1]
        a, b = points[i - 1], points[i]
        w = (t - a.t) / (b.t - a.t)

        def mix(x: Mapping[str, float], y: Mapping[str, float]) -> dict[str, float]:
            return {name: x[name] + (y[name] - x[name]) * w for name in y}

        return Point(t, mix(a.cpu, b.cpu), mix(a.db, b.db))

    def cores(self, t0: float, t1: float) -> dict[str, float]:
        """Average cores of each group between t0 and t1; 'other processes': the rest of the machine."""
        wall = (t1 - t0) or 1.0
        used = self.cpu_seconds(t0, t1)
        everything = used.pop("everything")
        groups = sum(value for name, value in used.items() if not name.endswith(LOOP))
        used["other processes"] = max(0.0, everything - groups)
        return {name: round(value / wall, 2) for name, value in used.items()}

    def cpu_seconds(self, t0: float, t1: float) -> dict[str, float]:
        a, b = self.at(t0), self.at(t1)
        return {name: b.cpu[name] - a.cpu[name] for name in b.cpu}

    def counted(self, t0: float, t1: float) -> dict[str, float]:
        a, b = self.at(t0), self.at(t1)
        return {name: b.db[name] - a.db[name] for name in b.db}


# -- one run ------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    batch: BatchRun
    sampler: Sampler
    dispatch_window: tuple[float, float] | None  # Unix times of in_progress and finalizing (server log)
    exact: dict[str, float] = field(default_factory=dict)  # pg_stat_database, server start -> stop

    @property
    def dispatch_s(self) -> float | None:
        return self.batch.phase_s("dispatch")

    def dispatch_rps(self) -> float | None:
        seconds = self.dispatch_s
        return self.batch.requests / seconds if seconds else None

    def run_cores(self) -> dict[str, float]:
        return self.sampler.cores(self.sampler.start, self.sampler.end)

    def dispatch_cores(self) -> dict[str, float]:
        return self.sampler.cores(*self.dispatch_window) if self.dispatch_window else {}

    def dispatch_cpu_per_k(self) -> dict[str, float]:
        """CPU milliseconds per 1,000 requests in the dispatch phase, by group."""
        if self.dispatch_window is None:
            return {}
        used = self.sampler.cpu_seconds(*self.dispatch_window)
        return {name: round(value * 1e6 / self.batch.requests, 1) for name, value in used.items()}

    def dispatch_counts(self) -> dict[str, float]:
        return self.sampler.counted(*self.dispatch_window) if self.dispatch_window else {}

    def summary(self) -> dict[str, Any]:
        return {
            "overnight": self.batch.summary(),
            "cores_end_to_end": self.run_cores(),
            "cores_dispatch": self.dispatch_cores(),
            "cpu_ms_per_1000_requests_dispatch": self.dispatch_cpu_per_k(),
            "pg_dispatch": self.dispatch_counts(),
            "pg_start_to_stop": self.exact,
            "pg_backends_seen": len(self.sampler.backends_seen),
            "dispatch_window": self.dispatch_window,
            "samples": [
                {"t": round(point.t, 3), **{k: round(v, 3) for k, v in (point.cpu | point.db).items()}}
                for point in self.sampler.points
            ],
        }


async def _measure(
    label: str, server: Overnight, path: Path, requests: int, watch: dict[str, list[int]], db: Database | None
) -> Run:
    before = (await db.settled()) if db is not None else {}
    with server:
        pids = {SERVER: [server.pid], **watch}
        if db is not None:
            pids[SHARED] = await db.shared_pids()
        async with Sampler(pids, db) as sampler:
            batch = await run_batch(server, path, requests, watch)
        events = log_events(server.log(), batch.batch["id"])
    exact: dict[str, float] = {}
    if db is not None:
        after = await db.settled()
        exact = {name: after[name] - before[name] for name in after}
    window = (
        (events["in_progress"], events["finalizing"])
        if {"in_progress", "finalizing"} <= set(events)
        else None
    )
    return Run(label, batch, sampler, window, exact)


def _no_stores() -> dict[str, str | None]:
    """Whatever this shell says about stores, the baseline is on SQLite and the data folder."""
    return dict.fromkeys(STORE_VARIABLES)


def _stores(db: Database, s3: SeaweedS3, prefix: str = BLOB_PREFIX) -> dict[str, str | None]:
    return {
        **_no_stores(),
        "OVERNIGHT_DATABASE_URL": db.dsn,
        "OVERNIGHT_BLOB_URL": f"s3://{s3.bucket}/{prefix}",
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
    }


@contextlib.contextmanager
def _seaweed(work: Path, name: str = "scaleout") -> Iterator[SeaweedS3]:
    """SeaweedFS for the run; its folder is removed at the end (its log copied beside the server logs)."""
    from support.seaweed import SeaweedS3

    root = work / f"{name}-seaweed"
    try:
        with SeaweedS3(root, bucket=BUCKET) as s3:
            yield s3
    finally:
        with contextlib.suppress(OSError):
            shutil.copyfile(root / "weed.log", work / f"{name}-weed.log")
        shutil.rmtree(root, ignore_errors=True)


async def _warm_up(s3: SeaweedS3) -> None:
    """A fresh SeaweedFS allocates a volume on the first write (some 0.2 s): not part of the measurement."""
    async with s3.client() as client:
        await client.put_object(Bucket=s3.bucket, Key="warm-up", Body=b"warm-up")
        await client.delete_object(Bucket=s3.bucket, Key="warm-up")


async def run(work: Path, requests: int, concurrency: int) -> Section:
    path = work / "scaleout.jsonl"
    write_chat_file(path, requests)
    try:
        with Nginx() as nginx:
            watch = {"nginx": nginx.pids}
            async with database() as db:  # first: a server Overnight cannot use fails before any run
                version = await db.version()
                local_server = Overnight(
                    work, "scaleout-sqlite", nginx.base_url, concurrency, env=_no_stores()
                )
                local = await _measure(LOCAL, local_server, path, requests, watch, None)
                with _seaweed(work) as s3:
                    remote_server = Overnight(
                        work, "scaleout-postgres", nginx.base_url, concurrency, env=_stores(db, s3)
                    )
                    remote_server.migrate()
                    await _warm_up(s3)
                    assert s3.process is not None
                    remote_watch = {**watch, SEAWEED: [s3.process.pid]}
                    remote = await _measure(REMOTE, remote_server, path, requests, remote_watch, db)
                where = f"PostgreSQL {version} ({db.found.kind} server)"
    finally:
        path.unlink(missing_ok=True)
    return _section(requests, concurrency, local, remote, where)


# -- the report ---------------------------------------------------------------------------------------


def _pair(a: float | None, b: float | None, show: Callable[[float | None], str] = ms) -> str:
    return f"{show(a)} / {show(b)}"


def _per_k(value: float, requests: int) -> str:
    per_k = value * 1000 / requests
    return f"{per_k:,.1f}" if per_k < 100 else f"{per_k:,.0f}"


def _check_text(batch: BatchRun) -> str:
    check = batch.check
    return f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}"


def _complete(batch: BatchRun) -> bool:
    return batch.check.ok and batch.check.lines == batch.requests and batch.error_lines == 0


def _add_database(section: Section, remote: Run, requests: int) -> None:
    counts = remote.dispatch_counts()
    seconds = remote.dispatch_s
    if counts and seconds:
        wal = counts[WAL]
        section.add(
            "PostgreSQL, dispatch phase: WAL written (the whole server)", f"{wal / seconds / 1e6:,.1f} MB/s"
        )
        section.add("  WAL per 1,000 requests", f"{wal / requests:,.0f} kB")
        timely = seconds >= 2 * LAG_S
        xacts = counts["xact_commit"] + counts["xact_rollback"]
        written = counts["tup_inserted"] + counts["tup_updated"] + counts["tup_deleted"]
        section.add(
            f"PostgreSQL, dispatch phase (counters up to {LAG_S:g} s late): transactions/s",
            f"{xacts / seconds:,.0f} /s" if timely else "n/a",
        )
        section.add("  transactions per 1,000 requests", _per_k(xacts, requests) if timely else "n/a")
        section.add("  rows written per 1,000 requests", _per_k(written, requests) if timely else "n/a")
        if not timely:
            section.notes.append(
                f"the dispatch phase took under {2 * LAG_S:g} s: too short for PostgreSQL's counters, which "
                f"report up to {LAG_S:g} s late (use more --requests)"
            )
    exact = remote.exact
    if exact:
        xacts = exact["xact_commit"] + exact["xact_rollback"]
        section.add("PostgreSQL, server start -> stop (exact): transactions", f"{xacts:,.0f}")
        section.add("  transactions per 1,000 requests", _per_k(xacts, requests))
        rows = " / ".join(
            _per_k(exact[f"tup_{name}"], requests) for name in ("inserted", "updated", "deleted")
        )
        section.add("  rows inserted / updated / deleted per 1,000 requests", rows)
        read = " / ".join(_per_k(exact[f"tup_{name}"], requests) for name in ("returned", "fetched"))
        section.add("  rows returned / fetched per 1,000 requests", read)


def _add_cpu(section: Section, local: Run, remote: Run) -> None:
    local_cores, remote_cores = local.dispatch_cores(), remote.dispatch_cores()
    if not (local_cores and remote_cores):
        return
    measured = remote.sampler.backends_local
    section.add(
        "cores in the dispatch phase: server (SQLite / PostgreSQL+S3)",
        f"{local_cores[SERVER]:.2f} / {remote_cores[SERVER]:.2f}",
    )
    section.add(
        "cores in the dispatch phase: PostgreSQL backends / shared / SeaweedFS",
        (f"{remote_cores[BACKENDS]:.2f}" if measured else "n/a")
        + f" / {remote_cores[SHARED]:.2f} / {remote_cores[SEAWEED]:.2f}",
    )
    local_ms, remote_ms = local.dispatch_cpu_per_k(), remote.dispatch_cpu_per_k()
    section.add(
        "CPU per 1,000 requests, dispatch phase: server (SQLite / PostgreSQL+S3)",
        f"{local_ms[SERVER]:,.1f} ms / {remote_ms[SERVER]:,.1f} ms",
    )
    section.add(
        "CPU per 1,000 requests, dispatch phase: PostgreSQL backends / shared / SeaweedFS",
        (f"{remote_ms[BACKENDS]:,.1f} ms" if measured else "n/a")
        + f" / {remote_ms[SHARED]:,.1f} ms / {remote_ms[SEAWEED]:,.1f} ms",
    )
    stores = sum(remote_ms[name] for name in (SERVER, BACKENDS, SHARED, SEAWEED))
    section.add(
        "  server and its stores together (SQLite / PostgreSQL+S3)",
        f"{local_ms[SERVER]:,.1f} ms / {stores:,.1f} ms",
    )


def _section(requests: int, concurrency: int, local: Run, remote: Run, where: str) -> Section:
    section = Section(
        "scaleout",
        f"7. scaleout: {requests:,} chat requests, instant upstream (nginx, 1 worker), concurrency "
        f"{concurrency}, one `overnight serve`: {LOCAL}, then {where} + S3 (SeaweedFS `weed mini`)",
    )
    section.add(f"{LOCAL}: end to end (upload -> output downloaded)", rate(local.batch.rps))
    section.add(f"{REMOTE}: end to end", rate(remote.batch.rps))
    end_to_end = remote.batch.rps / local.batch.rps
    section.add(f"  {REMOTE} / {LOCAL}", ratio(end_to_end), f">= {GOAL}", end_to_end >= GOAL)
    local_rps, remote_rps = local.dispatch_rps(), remote.dispatch_rps()
    dispatch_ratio = remote_rps / local_rps if local_rps and remote_rps else None
    if local_rps and remote_rps and dispatch_ratio:
        section.add(f"{LOCAL}: dispatch phase alone", rate(local_rps))
        section.add(f"{REMOTE}: dispatch phase alone", rate(remote_rps))
        section.add(f"  {REMOTE} / {LOCAL}", ratio(dispatch_ratio))
    for name in PHASES:
        section.add(
            f"  phase: {name} (SQLite / PostgreSQL+S3)",
            _pair(local.batch.phases_ms.get(name), remote.batch.phases_ms.get(name)),
        )
    section.add(
        "  total (SQLite / PostgreSQL+S3)", _pair(local.batch.total_s * 1000, remote.batch.total_s * 1000)
    )
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{_check_text(local.batch)}; {_check_text(remote.batch)}",
        "complete",
        _complete(local.batch) and _complete(remote.batch),
    )
    section.add(
        "server peak RSS (SQLite / PostgreSQL+S3)",
        _pair(local.batch.peak_rss_mb, remote.batch.peak_rss_mb, lambda mb: f"{mb or 0:,.0f} MB"),
    )
    _add_database(section, remote, requests)
    _add_cpu(section, local, remote)
    for run in (local, remote):
        section.notes.append(f"cores used, {run.label}, end to end: {cores(run.run_cores())}")
        section.notes.append(f"cores used, {run.label}, dispatch phase: {cores(run.dispatch_cores())}")
    section.notes.append(
        f"'{BACKENDS}': the processes serving the run's database ({len(remote.sampler.backends_seen)} seen: "
        f"the server's connection pool, and autovacuum); '{SHARED}': PostgreSQL's own processes (WAL "
        "writer, checkpointer, ...), shared with its other databases"
        + ("" if remote.sampler.backends_local else "; the server is not on this machine: no CPU figures")
    )
    if remote.sampler.others_busy:
        section.notes.append(
            f"other databases on this PostgreSQL server had up to {remote.sampler.others_busy} busy "
            "connection(s) at once during the run: their WAL is in the WAL figure, their CPU in 'other "
            "processes'"
        )
    section.notes.append(
        "PostgreSQL counts transactions, not statements (that needs pg_stat_statements preloaded); the "
        "dispatch phase's counts trail by up to a second at each end (PostgreSQL publishes a backend's "
        "counts at most once a second); start -> stop counts are exact and include the client's GET "
        "polls every 50 ms and the server's start and shutdown"
    )
    section.data = {
        "requests": requests,
        "concurrency": concurrency,
        "postgres": where,
        "sqlite": local.summary(),
        "postgres_s3": remote.summary(),
        "ratio_end_to_end": end_to_end,
        "ratio_dispatch": dispatch_ratio,
        "goal": GOAL,
    }
    return section
