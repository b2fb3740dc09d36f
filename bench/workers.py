"""8. Many workers: one batch over 1, 2 and 4 `overnight worker`s on PostgreSQL + S3, at a 50 ms upstream.

Each run has a database of its own (made on the tests' PostgreSQL server and migrated, dropped at its
end: scaleout.database()), one API server (`overnight serve --no-worker`) that the client talks to, and N
workers (`overnight worker --metrics-port`) that run the batch, all on that database and on one SeaweedFS
(`weed mini`, started once for the scenario; each run writes under a prefix of its own). The upstream
answers every request after 50 ms (nginx with echo_sleep, or the latency scenario's fallback).

The backend's `max_concurrency` is PER_WORKER x N: each worker's fair share of it is PER_WORKER, so a
worker's ideal rate is PER_WORKER / 50 ms and the N-worker run's is N times that. The batch has
`per_worker_requests` x N lines (20,000 x N; at most 50,000, the Batch API's limit per batch), so that
every run lasts about as long at its ideal rate, in shards of min(SHARD_LINES, lines / (4 N)) lines: every
worker gets shards from the start and one that finishes early claims the next (`worker_max_shards` 4 at
once).

The throughput that counts is the *steady* rate: lines done per second while every worker holds a shard
and its share of the backend's slots (the shards and backend_slots tables, polled every WATCH_S), within
10 % -> 90 % of the lines (the client's polls of request_counts, every 50 ms). It leaves out the ramp-up,
where the workers find the batch up to `worker_poll_interval_s` (1 s) apart and the first one holds
every slot until the others have theirs (slots change hands at the workers' polls), and the tail, where
the last shards run on fewer workers. The dispatch phase (in_progress -> finalizing) and end-to-end
rates, which hold both, are shown beside it, and so is the ramp-up's length.

While each batch runs, scaleout.Sampler reads the CPU seconds of the API server, each worker (and its
event loop thread), the upstream, SeaweedFS and the database's PostgreSQL backends every 0.1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from overnight.domain.limits import MAX_REQUESTS_PER_BATCH

from .client import BatchRun, run_batch, session
from .latency import _upstream
from .nginx import Nginx
from .procs import Overnight
from .report import Section, cores, ms, rate, ratio
from .scaleout import BACKENDS, LOOP, SEAWEED, SHARED, Sampler, _seaweed, _stores, _warm_up, database
from .workload import write_chat_file

if TYPE_CHECKING:
    import asyncpg

    from support.seaweed import SeaweedS3

    from .procs import FakeUpstream
    from .scaleout import Database

GOAL = 0.9
WORKER_COUNTS = (1, 2, 4)
PER_WORKER = 128  # each worker's share of max_concurrency
SHARD_LINES = 1_000
STEADY = (0.1, 0.9)  # the share of the lines done between which the steady rate is measured
SATURATED = 0.9  # the share of the machine's CPUs busy from which a run counts as saturated
WATCH_S = 0.1
API, WORKERS, LOOPS = "api server", "workers", "busiest worker event loop"
RESULTS = "overnight_request_results_total"
IN_FLIGHT = "overnight_upstream_in_flight"
SLOTS = "overnight_backend_slots"
_STARTING = re.compile(r"starting: role=\S+ id=(\S+)")


# -- a cluster: one API server and N workers ----------------------------------------------------------


class Cluster:
    """An API server and `count` workers on the same settings and stores (`env`); migrated once, started
    together (each waited for until it answers /health) and stopped together, whatever happens."""

    def __init__(
        self,
        work: Path,
        name: str,
        upstream: str,
        max_concurrency: int,
        count: int,
        env: Mapping[str, str | None],
        **settings: float | str,
    ) -> None:
        def make(label: str, role: str) -> Overnight:
            return Overnight(
                work, f"{name}-{label}", upstream, max_concurrency, env=env, role=role, **settings
            )

        self.api = make("api", "api")
        self.workers = [make(f"worker-{i}", "worker") for i in range(1, count + 1)]

    @property
    def processes(self) -> list[Overnight]:
        return [self.api, *self.workers]

    def start(self) -> Cluster:
        try:
            self.api.migrate()
            for process in self.processes:
                process.launch()
            for process in self.processes:
                process.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM to every process at once, then wait for each (SIGKILL after 30 s)."""
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                process.process.terminate()
        for process in self.processes:
            process.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def worker_ids(self) -> dict[str, Overnight]:
        """Each worker's id (from the line its log starts with) to its process."""
        found: dict[str, Overnight] = {}
        for worker in self.workers:
            match = _STARTING.search(worker.log())
            if match is not None:
                found[match.group(1)] = worker
        return found

    def leader_of(self, batch_id: str) -> Overnight | None:
        """The worker that moved the batch to in_progress (its leader then)."""
        return next((w for w in self.workers if f"batch in_progress id={batch_id} " in w.log()), None)


async def scrape(http: aiohttp.ClientSession, process: Overnight) -> dict[str, float]:
    """A worker's /metrics: each metric's name (its labels dropped) to the sum of its series."""
    async with http.get(process.root + "/metrics") as response:
        response.raise_for_status()
        text = await response.text()
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            totals[series.split("{", 1)[0]] += float(value)
    return dict(totals)


# -- the shards table, polled ---------------------------------------------------------------------------

_SHARDS = """
SELECT s.shard_no, s.done, s.worker_id, b.worker_id AS leader
FROM shards s JOIN batches b ON b.id = s.batch_id ORDER BY s.shard_no
"""
_SLOTS = """
SELECT worker_id, count(*) AS slots FROM backend_slots
WHERE worker_id IS NOT NULL AND lease_expires_at > $1 GROUP BY worker_id
"""


@dataclass
class ShardView:
    t: float  # Unix time
    leader: str | None  # the worker holding the batch's lease (the run has one batch)
    open: dict[int, str | None]  # each shard not done yet: who holds it (None: nobody)
    done: int  # shards done
    slots: dict[str, int]  # each worker's backend slots (leases not run out)

    @property
    def holders(self) -> set[str]:
        return {worker for worker in self.open.values() if worker is not None}


@dataclass
class ShardWatch:
    """Reads the run's shards and each worker's backend slots every `interval_s` while in the block
    (`async with`), on a connection of its own to the run's database."""

    dsn: str
    interval_s: float = WATCH_S
    views: list[ShardView] = field(default_factory=list)
    _conn: asyncpg.Connection | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def _read(self) -> ShardView:
        assert self._conn is not None
        rows = await self._conn.fetch(_SHARDS)
        t = time.time()
        slots = {row["worker_id"]: int(row["slots"]) for row in await self._conn.fetch(_SLOTS, int(t))}
        leader = rows[0]["leader"] if rows else None
        open_ = {int(row["shard_no"]): row["worker_id"] for row in rows if not row["done"]}
        return ShardView(t, leader, open_, sum(1 for row in rows if row["done"]), slots)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self.views.append(await self._read())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)

    async def __aenter__(self) -> ShardWatch:
        import asyncpg

        from support.postgres import CONNECT_TIMEOUT_S

        self._conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=5)  # its reading in progress ends
            self._task.cancel()
        if self._conn is not None:
            try:
                await self._conn.close(timeout=5)
            except Exception:
                self._conn.terminate()

    def first(self, after: float, test: Callable[[ShardView], bool]) -> ShardView | None:
        return next((view for view in self.views if view.t >= after and test(view)), None)


# -- progress ---------------------------------------------------------------------------------------


def crossing(progress: list[tuple[float, int]], count: float) -> float | None:
    """When the lines done first reached `count`, interpolated between the client's polls."""
    before: tuple[float, int] | None = None
    for t, done in progress:
        if done >= count:
            if before is None or done <= before[1]:
                return t
            return before[0] + (t - before[0]) * (count - before[1]) / (done - before[1])
        before = (t, done)
    return None


def done_at(progress: list[tuple[float, int]], t: float) -> float:
    """Lines done at time `t`, interpolated between the client's polls."""
    before = (progress[0][0], 0) if progress else (t, 0)
    for when, done in progress:
        if when >= t:
            if when <= before[0]:
                return float(done)
            return before[1] + (done - before[1]) * (t - before[0]) / (when - before[0])
        before = (when, done)
    return float(before[1])


def rate_between(progress: list[tuple[float, int]], t0: float, t1: float) -> float | None:
    return (done_at(progress, t1) - done_at(progress, t0)) / (t1 - t0) if t1 > t0 else None


# -- one run ------------------------------------------------------------------------------------------


@dataclass
class WorkersRun:
    workers: int
    requests: int
    shard_lines: int
    batch: BatchRun
    sampler: Sampler
    window: tuple[float, float]  # the steady window (Unix times)
    ramp_s: float | None  # from the first shard held until every worker held one and its share of slots
    all_busy: bool  # whether the window is one where every worker was (not only 10 % -> 90 %)
    lines_by_worker: list[float]  # overnight_request_results_total of each worker at the end
    views: list[ShardView]  # the shards table, polled

    @property
    def names(self) -> list[str]:
        return [f"worker-{i}" for i in range(1, self.workers + 1)]

    @property
    def steady_rps(self) -> float:
        return rate_between(self.batch.progress, *self.window) or 0.0

    def dispatch_rps(self) -> float | None:
        seconds = self.batch.phase_s("dispatch")
        return self.requests / seconds if seconds else None

    def kinds(self, used: dict[str, float]) -> dict[str, float]:
        """`used` by process kind: the workers together, and their busiest event loop thread."""
        out = {k: v for k, v in used.items() if not k.startswith("worker-")}
        out[WORKERS] = sum(used[name] for name in self.names)
        out[LOOPS] = max(used[name + LOOP] for name in self.names)
        return out

    def steady_cores(self) -> dict[str, float]:
        return self.kinds(self.sampler.cores(*self.window))

    def steady_cpu_ms_per_k(self) -> dict[str, float]:
        """CPU milliseconds per 1,000 lines done in the steady window, by kind."""
        used = self.sampler.cpu_seconds(*self.window)
        used.pop("everything", None)
        lines = done_at(self.batch.progress, self.window[1]) - done_at(self.batch.progress, self.window[0])
        if lines <= 0:
            return {}
        return {k: round(v * 1e6 / lines, 1) for k, v in self.kinds(used).items()}

    def cpu_ms_per_k_all(self) -> float:
        """CPU ms per 1,000 lines of every process measured (not 'other processes')."""
        per_k = self.steady_cpu_ms_per_k()
        return sum(v for k, v in per_k.items() if k not in (LOOPS, "other processes"))

    def carried(self, cpus: int) -> float | None:
        """The rate `cpus` cores could carry at this run's CPU cost per line."""
        total = self.cpu_ms_per_k_all()
        return cpus * 1e6 / total if total else None

    def machine_busy(self) -> float:
        """Cores in use on the whole machine in the steady window."""
        used = self.sampler.cores(*self.window)
        return sum(v for k, v in used.items() if not k.endswith(LOOP))

    def summary(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "requests": self.requests,
            "shard_lines": self.shard_lines,
            "steady_rps": self.steady_rps,
            "steady_window": self.window,
            "steady_window_all_workers_busy": self.all_busy,
            "ramp_up_s": self.ramp_s,
            "dispatch_rps": self.dispatch_rps(),
            "overnight": self.batch.summary(),
            "cores_steady": self.steady_cores(),
            "cores_end_to_end": self.kinds(self.sampler.cores(self.sampler.start, self.sampler.end)),
            "cpu_ms_per_1000_lines_steady": self.steady_cpu_ms_per_k(),
            "lines_by_worker": self.lines_by_worker,
            "progress": [(round(t, 3), done) for t, done in self.batch.progress],
            "slots": [(round(v.t, 3), len(v.holders), v.slots) for v in self.views],
        }


def _full(view: ShardView, workers: int) -> bool:
    """Every worker holds a shard and its whole share of the slots."""
    shares = [view.slots.get(worker, 0) for worker in view.holders]
    return len(shares) >= workers and min(shares) >= PER_WORKER


def _window(
    batch: BatchRun, watch: ShardWatch, workers: int
) -> tuple[tuple[float, float], float | None, bool]:
    """The steady window: 10 % -> 90 % of the lines done, narrowed to when every worker held a shard and
    its share of the slots; how long after the first shard was held every worker had both (ramp-up);
    whether such a window was found."""
    lo = crossing(batch.progress, STEADY[0] * batch.requests) or batch.progress[0][0]
    hi = crossing(batch.progress, STEADY[1] * batch.requests) or batch.progress[-1][0]
    started = watch.first(0.0, lambda view: bool(view.holders))
    full = watch.first(0.0, lambda view: _full(view, workers))
    busy = [view.t for view in watch.views if len(view.holders) >= workers]
    ramp = full.t - started.t if full is not None and started is not None else None
    if full is not None and busy and min(hi, busy[-1]) > max(lo, full.t):
        return (max(lo, full.t), min(hi, busy[-1])), ramp, True
    return (lo, hi), ramp, False


async def _lines_by_worker(cluster: Cluster) -> list[float]:
    async with session() as http:
        return [(await scrape(http, worker)).get(RESULTS, 0.0) for worker in cluster.workers]


async def _one(
    work: Path, workers: int, requests: int, upstream: str, watch: dict[str, list[int]], s3: SeaweedS3
) -> tuple[WorkersRun, str]:
    name = f"workers-{workers}"
    path = work / f"{name}.jsonl"
    write_chat_file(path, requests)
    shard_lines = max(1, min(SHARD_LINES, requests // (4 * workers)))
    try:
        async with database() as db:
            env = _stores(db, s3, name)
            cluster = Cluster(
                work, name, upstream, PER_WORKER * workers, workers, env, shard_lines=shard_lines
            )
            with cluster:
                run = await _measure(cluster, db, path, requests, shard_lines, watch)
            where = f"PostgreSQL {await db.version()} ({db.found.kind} server)"
    finally:
        path.unlink(missing_ok=True)
    return run, where


async def _measure(
    cluster: Cluster, db: Database, path: Path, requests: int, shard_lines: int, watch: dict[str, list[int]]
) -> WorkersRun:
    names = {f"worker-{i}": [w.pid] for i, w in enumerate(cluster.workers, 1)}
    pids = {API: [cluster.api.pid], **names, **watch, SHARED: await db.shared_pids()}
    async with ShardWatch(db.dsn) as shards, Sampler(pids, db, main_thread_of=tuple(names)) as sampler:
        batch = await run_batch(cluster.api, path, requests, watch, workers=cluster.workers)
    window, ramp, all_busy = _window(batch, shards, len(cluster.workers))
    lines = await _lines_by_worker(cluster)
    return WorkersRun(
        len(cluster.workers),
        requests,
        shard_lines,
        batch,
        sampler,
        window,
        ramp,
        all_busy,
        lines,
        shards.views,
    )


async def run(
    work: Path, per_worker_requests: int, latency_ms: float, counts: tuple[int, ...] = WORKER_COUNTS
) -> Section:
    runs: list[WorkersRun] = []
    where = "PostgreSQL"
    upstream, kind = _upstream(latency_ms)
    print(f"bench: workers: upstream is {kind}", file=sys.stderr, flush=True)
    with upstream, _seaweed(work, "workers") as s3:
        await _warm_up(s3)
        assert s3.process is not None
        watch = {_upstream_group(upstream): upstream.pids, SEAWEED: [s3.process.pid]}
        for workers in counts:
            requests = min(per_worker_requests * workers, MAX_REQUESTS_PER_BATCH)
            print(f"bench: workers: {workers} worker(s), {requests:,} lines", file=sys.stderr, flush=True)
            one, where = await _one(work, workers, requests, upstream.base_url, watch, s3)
            runs.append(one)
    return _section(runs, latency_ms, kind, where)


def _upstream_group(upstream: Nginx | FakeUpstream) -> str:
    return "nginx" if isinstance(upstream, Nginx) else "fake upstream"


# -- the report ---------------------------------------------------------------------------------------

_SHOWN = (API, WORKERS, LOOPS, "nginx", "fake upstream", BACKENDS, SEAWEED)


def _slash(values: Mapping[str, float], names: tuple[str, ...], show: Callable[[float], str]) -> str:
    return " / ".join(show(values[name]) for name in names if name in values)


def _add_rates(section: Section, one: WorkersRun, base: WorkersRun, ideal_1: float, cpus: int) -> None:
    count = one.workers
    ideal = ideal_1 * count
    steady = one.steady_rps
    section.add(
        f"{count} worker{'s' if count > 1 else ''}: {one.requests:,} lines, shards of {one.shard_lines:,}; "
        f"steady rate (ideal {ideal:,.0f})",
        rate(steady),
    )
    section.add("  / ideal", ratio(steady / ideal))
    if count > 1:
        scaling = steady / (count * base.steady_rps)
        saturated = one.machine_busy() >= SATURATED * cpus
        why = " (CPU-saturated)" if saturated else "" if one.all_busy else " (no steady window)"
        # below the goal counts as a failure only on a machine with CPU to spare and a steady window
        passed = True if scaling >= GOAL else (None if why else False)
        section.add(
            f"  / ({count} x the 1-worker rate){why}", ratio(scaling), f">= {GOAL} until saturated", passed
        )
    dispatch, base_dispatch = one.dispatch_rps(), base.dispatch_rps()
    section.add(
        "  dispatch phase / end to end", f"{rate(dispatch) if dispatch else 'n/a'} / {rate(one.batch.rps)}"
    )
    if count > 1 and dispatch and base_dispatch:
        section.add(
            f"  dispatch phase / ({count} x the 1-worker one)", ratio(dispatch / (count * base_dispatch))
        )
    phases = one.batch.phases_ms
    section.add(
        "  phases: validation / dispatch / finalization",
        " / ".join(ms(phases.get(name)) for name in ("validation", "dispatch", "finalization")),
    )
    section.add(
        f"  ramp-up: first shard held -> every worker holds a shard and {PER_WORKER} slots",
        f"{one.ramp_s:.1f} s" if one.ramp_s is not None else "never",
    )


def _add_cpu(section: Section, one: WorkersRun, cpus: int) -> None:
    used = one.steady_cores()
    names = tuple(name for name in _SHOWN if name in used)
    section.add(
        f"  cores, steady: {' / '.join(names)} / machine",
        f"{_slash(used, names, '{:.2f}'.format)} / {one.machine_busy():.2f} of {cpus}",
    )
    per_k = one.steady_cpu_ms_per_k()
    if per_k:
        kinds = tuple(name for name in names if name != LOOPS)
        section.add(
            f"  CPU ms per 1,000 lines: {' / '.join(kinds)} / all (bench client included)",
            f"{_slash(per_k, kinds, '{:,.0f}'.format)} / {one.cpu_ms_per_k_all():,.0f}",
        )
        carried = one.carried(cpus)
        section.add(f"  at that cost, {cpus} cores carry at most", rate(carried) if carried else "n/a")


def _add_run(section: Section, one: WorkersRun, base: WorkersRun, ideal_1: float, cpus: int) -> None:
    _add_rates(section, one, base, ideal_1, cpus)
    _add_cpu(section, one, cpus)
    section.add("  lines run by each worker", " / ".join(f"{lines:,.0f}" for lines in one.lines_by_worker))
    check = one.batch.check
    section.add(
        "  output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete",
        check.ok and check.lines == one.requests and one.batch.error_lines == 0,
    )


def _saturation(runs: list[WorkersRun], ideal_1: float, cpus: int) -> str:
    """Where the machine would saturate, from the largest run's CPU cost per line."""
    last = runs[-1]
    carried = last.carried(cpus)
    busy = last.machine_busy()
    if carried is None:
        return "no CPU figures for the largest run"
    return (
        f"saturation: at the {last.workers}-worker run's cost ({last.cpu_ms_per_k_all():,.0f} CPU ms per "
        f"1,000 lines in all: API server, workers, upstream, PostgreSQL, SeaweedFS, bench client) {cpus} "
        f"cores carry about {carried:,.0f} req/s, i.e. {carried / ideal_1:.1f} workers of {ideal_1:,.0f} "
        f"req/s; that run kept {busy:.2f} of {cpus} cores busy"
        + (" (saturated)" if busy >= SATURATED * cpus else "")
    )


def _section(runs: list[WorkersRun], latency_ms: float, kind: str, where: str) -> Section:
    cpus = len(os.sched_getaffinity(0))
    ideal_1 = PER_WORKER / (latency_ms / 1000)
    counts = "/".join(str(one.workers) for one in runs)
    section = Section(
        "workers",
        f"8. workers: one batch over {counts} `overnight worker`(s) and one API server "
        f"(`serve --no-worker`) on {where} + S3 (SeaweedFS), {latency_ms:g} ms upstream ({kind}), "
        f"max_concurrency {PER_WORKER} per worker; ideal N x {ideal_1:,.0f} req/s",
    )
    for one in runs:
        _add_run(section, one, runs[0], ideal_1, cpus)
    for one in runs:
        section.notes.append(
            f"cores used, {one.workers} worker(s), steady window: {cores(one.steady_cores())}"
        )
        if not one.all_busy:
            section.notes.append(
                f"{one.workers} worker(s): no stretch of 10 % -> 90 % had every worker holding a shard and "
                "its share of the slots; the steady rate is that of 10 % -> 90 % (use more --requests)"
            )
    section.notes.append(_saturation(runs, ideal_1, cpus))
    section.notes.append(
        "steady rate: lines done per second while every worker held a shard and its share of the slots, "
        "within 10 % -> 90 % of the lines; 'machine': every process on it, 'other processes' included; "
        "CPU ms per 1,000 lines and 'cores carry at most' exclude other processes"
    )
    section.data = {
        "latency_ms": latency_ms,
        "upstream": kind,
        "postgres": where,
        "per_worker_concurrency": PER_WORKER,
        "ideal_rps_per_worker": ideal_1,
        "cpus": cpus,
        "goal": GOAL,
        "runs": [one.summary() for one in runs],
    }
    return section
