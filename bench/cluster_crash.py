"""9. A worker killed mid-batch: three workers and an API server on PostgreSQL + S3, kill -9 at 40 %.

One API server and WORKERS workers (workers.Cluster) on a database made for the run and a SeaweedFS started
for it run the crash scenario's batch (a key per line: tests/support/fake_upstream.py counts how often each
line ran) at a 20 ms fake upstream, with `lease_s` LEASE_S (so that a dead worker's leases run out soon) and
shards of SHARD_LINES lines (each worker runs `worker_max_shards`, 4, at once). When 40 % of the lines are
done, the batch's leader is killed with SIGKILL: the harder case, where its batch lease, its shard leases and
its backend slots all have to run out. The other workers take its shards and the batch over and finish.

The bound on re-executions is what the dead worker had executed but not committed: its requests in flight
(at most its fair share of max_concurrency, domain.limits.fair_share) and one flush interval of its results
(its own rate before the kill, from its /metrics, x result_flush_interval_s). The takeover times come from
the shards table, polled every 50 ms: when another worker held the first of the dead worker's unfinished
shards, when it held the last, and when another worker held the batch's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from overnight.domain.limits import fair_share

from .client import Api, session
from .crash import FLUSH_S, KILL_AT
from .procs import FakeUpstream, Overnight
from .report import Section, rate
from .scaleout import _seaweed, _stores, _warm_up, database
from .workers import IN_FLIGHT, RESULTS, SLOTS, Cluster, ShardView, ShardWatch, crossing, rate_between, scrape
from .workload import check_output, write_chat_file

WORKERS = 3
LEASE_S = 5
SHARD_LINES = 1_000
METER_S = 0.1  # how often the worker to be killed is scraped before the kill
RATE_S = 1.0  # its rate: over its last second before the kill
WATCH_S = 0.05


@dataclass
class Sample:
    t: float
    results: float  # overnight_request_results_total
    in_flight: float  # overnight_upstream_in_flight
    slots: float  # overnight_backend_slots: its share now


@dataclass
class Observed:
    batch: dict[str, Any]
    output: bytes
    errors: bytes
    victim: str  # "worker-2"
    victim_id: str
    ids: list[str]  # every worker's id
    in_progress: float  # when the client saw the batch in_progress
    killed: float
    done_at_kill: int  # lines with a result when the kill was decided
    at_kill: dict[str, Any]  # the upstream's stats 0.2 s after the kill
    final: dict[str, Any]
    samples: list[Sample]
    progress: list[tuple[float, int]]


async def _meter(
    http: aiohttp.ClientSession, worker: Overnight, samples: list[Sample], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError):
            found = await scrape(http, worker)
            samples.append(
                Sample(time.time(), found.get(RESULTS, 0.0), found.get(IN_FLIGHT, 0.0), found.get(SLOTS, 0.0))
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METER_S)


async def _leader(cluster: Cluster, batch_id: str) -> Overnight:
    """The worker that moved the batch to in_progress (its log line may trail the store by a moment)."""
    for _ in range(100):
        leader = cluster.leader_of(batch_id)
        if leader is not None:
            return leader
        await asyncio.sleep(0.02)
    raise RuntimeError(f"no worker's log says it moved batch {batch_id} to in_progress")


async def _kill_and_finish(cluster: Cluster, path: Path, kill_at: int, upstream: FakeUpstream) -> Observed:
    async with session() as http:
        api = Api(http, cluster.api.base_url)
        uploaded = await api.upload(path)
        batch = await api.create(uploaded["id"])
        batch = await api.wait(batch["id"], lambda b: b["status"] != "validating", poll_s=0.01)
        in_progress = time.time()
        victim = await _leader(cluster, batch["id"])
        ids = cluster.worker_ids()
        victim_id = next((worker_id for worker_id, worker in ids.items() if worker is victim), None)
        if victim_id is None:
            raise RuntimeError("the leader's log does not say its worker id")
        samples: list[Sample] = []
        stop = asyncio.Event()
        meter = asyncio.create_task(_meter(http, victim, samples, stop))
        try:
            batch = await api.wait(
                batch["id"], lambda b: b["request_counts"]["completed"] >= kill_at, poll_s=0.01
            )
        finally:
            stop.set()
            await meter
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the batch was {batch['status']} before the kill; use more requests")
        victim.kill9()
        killed = time.time()
        done_at_kill = batch["request_counts"]["completed"]
        await asyncio.sleep(0.2)  # let the upstream count what reached it before the kill
        at_kill = upstream.stats()
        batch = await api.wait(batch["id"], lambda b: False)
        output = await api.content(batch["output_file_id"]) if batch.get("output_file_id") else b""
        errors = await api.content(batch["error_file_id"]) if batch.get("error_file_id") else b""
    name = f"worker-{cluster.workers.index(victim) + 1}"
    return Observed(
        batch=batch,
        output=output,
        errors=errors,
        victim=name,
        victim_id=victim_id,
        ids=sorted(ids),
        in_progress=in_progress,
        killed=killed,
        done_at_kill=done_at_kill,
        at_kill=at_kill,
        final=upstream.stats(),
        samples=samples,
        progress=api.progress,
    )


async def run(work: Path, requests: int, concurrency: int, latency_ms: float) -> Section:
    path = work / "cluster-crash.jsonl"
    write_chat_file(path, requests, keys=True)
    shard_lines = max(1, min(SHARD_LINES, requests // (4 * WORKERS)))
    try:
        with FakeUpstream("--latency-ms", str(latency_ms)) as upstream, _seaweed(work, "cluster-crash") as s3:
            await _warm_up(s3)
            async with database() as db:
                settings: dict[str, float | str] = {
                    "lease_s": LEASE_S,
                    "result_flush_interval_s": FLUSH_S,
                    "shard_lines": shard_lines,
                }
                env = _stores(db, s3, "cluster-crash")
                with Cluster(
                    work, "cluster-crash", upstream.base_url, concurrency, WORKERS, env, **settings
                ) as cluster:
                    async with ShardWatch(db.dsn, WATCH_S) as shards:
                        seen = await _kill_and_finish(cluster, path, int(requests * KILL_AT), upstream)
                where = f"PostgreSQL {await db.version()} ({db.found.kind} server)"
    finally:
        path.unlink(missing_ok=True)
    return _section(requests, concurrency, latency_ms, shard_lines, seen, shards, where)


# -- the report ---------------------------------------------------------------------------------------


def _victim_rate(samples: list[Sample]) -> float | None:
    """Its results per second over its last RATE_S before the kill (from its /metrics)."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    first = next((s for s in samples if s.t >= last.t - RATE_S), samples[0])
    return (last.results - first.results) / (last.t - first.t) if last.t > first.t else None


@dataclass
class Takeover:
    orphans: set[int]  # the dead worker's unfinished shards
    first: ShardView | None  # the first view where another worker held one of them
    last: ShardView | None  # ... all of them
    leader: ShardView | None  # ... the batch's lease


def _takeover(seen: Observed, shards: ShardWatch) -> Takeover:
    at_kill = shards.first(seen.killed, lambda view: True)
    orphans = {no for no, worker in at_kill.open.items() if worker == seen.victim_id} if at_kill else set()

    def taken(view: ShardView, shard_no: int) -> bool:
        holder = view.open.get(shard_no, "done")
        return holder not in (seen.victim_id, None)

    return Takeover(
        orphans,
        shards.first(seen.killed, lambda v: any(taken(v, no) for no in orphans)) if orphans else None,
        shards.first(seen.killed, lambda v: all(taken(v, no) for no in orphans)) if orphans else None,
        shards.first(seen.killed, lambda v: v.leader not in (seen.victim_id, None)),
    )


def _after(view: ShardView | None, killed: float) -> str:
    return f"{view.t - killed:.2f} s" if view is not None else "n/a"


def _section(
    requests: int,
    concurrency: int,
    latency_ms: float,
    shard_lines: int,
    seen: Observed,
    shards: ShardWatch,
    where: str,
) -> Section:
    by_key: dict[str, int] = seen.final["by_key"]
    rerun = [int(key[1:]) for key, n in by_key.items() if n > 1]
    extra_runs = sum(n - 1 for n in by_key.values() if n > 1)
    never_ran = sum(1 for i in range(requests) if f"k{i}" not in by_key)
    takeover = _takeover(seen, shards)
    in_orphans = sum(1 for i in rerun if i // shard_lines in takeover.orphans)  # line i + 1's shard
    share = fair_share(concurrency, seen.ids, seen.victim_id)
    pace = _victim_rate(seen.samples) or 0.0
    last = seen.samples[-1] if seen.samples else None
    # what it may have had in flight: the slots it was allowed at its last scrape (its fair share once
    # every worker has asked for slots; more before that), never less than its fair share
    allowed = max(share, int(last.slots)) if last is not None else share
    bound = allowed + math.ceil(pace * FLUSH_S)
    check = check_output(seen.output, requests)
    section = Section(
        "cluster_crash",
        f"9. cluster crash: {requests:,} requests, {latency_ms:g} ms fake upstream, {WORKERS} workers + "
        f"1 API server on {where} + S3 (SeaweedFS), max_concurrency {concurrency}, lease_s {LEASE_S}, "
        f"shards of {shard_lines:,} lines; kill -9 the leader at {KILL_AT:.0%} done, the others finish",
    )
    status = str(seen.batch["status"])
    section.add("batch status at the end", status, "completed", status == "completed")
    section.add(
        f"killed: {seen.victim} (the batch's leader) at lines done",
        f"{seen.done_at_kill:,} ({seen.done_at_kill / requests:.0%})",
    )
    section.add(f"  its fair share of max_concurrency {concurrency} ({WORKERS} workers)", f"{share}")
    if last is not None:
        section.add(
            f"  its last /metrics (<= {METER_S:g} s before the kill): in flight / slots",
            f"{last.in_flight:,.0f} / {last.slots:,.0f}",
        )
    section.add(f"  its rate over its last {RATE_S:g} s (its /metrics)", rate(pace))
    section.add("upstream executions in all, for lines", f"{seen.final['requests']:,} for {requests:,}")
    section.add(
        "requests the upstream executed more than once",
        f"{extra_runs:,} (on {len(rerun):,} lines, {in_orphans:,} in its shards)",
        f"<= {bound} ({allowed} in flight + {FLUSH_S:g} s of its results)",
        extra_runs <= bound,
    )
    section.add("lines the upstream never executed", f"{never_ran:,}", "0", never_ran == 0)
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete, no duplicates",
        check.ok and check.lines == requests,
    )
    section.add("error file lines", f"{len(seen.errors.splitlines()):,}", "0", not seen.errors.strip())
    section.add("its unfinished shards at the kill", f"{len(takeover.orphans)}")
    section.add("takeover: another worker holds the first of them", _after(takeover.first, seen.killed))
    section.add("  ... all of them", _after(takeover.last, seen.killed))
    section.add("  ... the batch's lease (its leadership)", _after(takeover.leader, seen.killed))
    _add_rates(section, requests, seen, takeover)
    section.notes.append(
        f"leases are whole seconds: the dead worker last renewed its leases (to int(now) + {LEASE_S} s) up "
        "to a poll (worker_poll_interval_s 1 s) before the kill, and another worker claims at its own poll, "
        "while it runs fewer than worker_max_shards (4): the first takeover is expected "
        f"{LEASE_S - 2}-{LEASE_S + 1} s after the kill, the last once the others have room"
    )
    section.data = {
        "requests": requests,
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "workers": WORKERS,
        "lease_s": LEASE_S,
        "shard_lines": shard_lines,
        "flush_interval_s": FLUSH_S,
        "killed": seen.victim,
        "lines_done_at_kill": seen.done_at_kill,
        "victim_share": share,
        "victim_allowed_in_flight": allowed,
        "victim_rate": pace,
        "victim_last_metrics": vars(last) if last else None,
        "executions_0_2_s_after_kill": seen.at_kill["requests"],
        "in_flight_at_upstream_after_kill": seen.at_kill.get("in_flight"),
        "executions_total": seen.final["requests"],
        "extra_executions": extra_runs,
        "lines_rerun": len(rerun),
        "lines_rerun_in_victim_shards": in_orphans,
        "never_executed": never_ran,
        "bound": bound,
        "orphan_shards": sorted(takeover.orphans),
        "takeover_first_s": takeover.first.t - seen.killed if takeover.first else None,
        "takeover_all_s": takeover.last.t - seen.killed if takeover.last else None,
        "takeover_leader_s": takeover.leader.t - seen.killed if takeover.leader else None,
        "output": vars(check),
        "error_lines": len(seen.errors.splitlines()),
        "status": status,
        "progress": [(round(t, 3), done) for t, done in seen.progress],
    }
    return section


def _add_rates(section: Section, requests: int, seen: Observed, takeover: Takeover) -> None:
    progress = seen.progress
    start = crossing(progress, 0.1 * requests) or seen.in_progress
    end = crossing(progress, 0.9 * requests) or progress[-1][0]
    first = takeover.first.t if takeover.first else None
    last = takeover.last.t if takeover.last else None
    spans = [
        ("10 % -> kill", start, seen.killed),
        ("kill -> first takeover", seen.killed, first),
        ("last takeover -> 90 %", last, end),
    ]
    shown = []
    for _label, t0, t1 in spans:
        value = rate_between(progress, t0, t1) if t0 is not None and t1 is not None else None
        shown.append(rate(value) if value is not None else "n/a")
    section.add(f"lines done per second: {' / '.join(label for label, _, _ in spans)}", " / ".join(shown))
    total = progress[-1][0] - seen.in_progress if progress else 0.0
    section.add("in_progress -> completed seen by the client", f"{total:.1f} s")
