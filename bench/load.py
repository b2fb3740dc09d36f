"""Load (issue 13): a 50,000-line batch's throughput alone, and again while 200 clients use the API.

Which row carries the goals, and why. One `overnight serve` runs the API and the engine on one event
loop, so the batch and the API's clients share its CPU. Two upstreams show the two sides of that,
the model-like one on both kinds of stores:

* **model-like (the goals)**: nginx answering every request after MODEL_LATENCY_MS (50 ms, the echo
  module's `echo_sleep`), `max_concurrency` 64: at most 1,280 lines/s, bound by the upstream's latency as
  with a real model server (they answer in tens of milliseconds at the least, seconds for long answers).
  The loop has room left, and the question is the issue's: does the API stay fast and error-free, and
  does the batch keep its pace, while 200 clients use it.
* **model-like on PostgreSQL + S3 (the goals too)**: the same upstream, the heavy load only, with the
  server's stores on a database made for the run on tests/support/postgres.py's server (migrated with
  `overnight migrate`, dropped at the end) and a SeaweedFS `weed mini` started for the run (scaleout's
  helpers). Where either cannot be had the run is skipped, and says so in a row; where it fails, a FAIL
  row says why, and the other runs' figures stay.
* **instant (a contrast, no goals)**: the `dispatch` scenario's nginx answering at once, `max_concurrency`
  64: the batch is bound by the server's CPU alone (the worst case), so whatever the API's clients cost,
  the batch pays in full, and API requests queue behind a saturated loop. It measures our CPU per
  request, not what a user of a model server sees. It runs the heavy load only: a lighter load (pauses
  of 2.5-7.5 s) ran here before the PostgreSQL run came, and was cut to keep the scenario near 5 min.

For each run: a fresh server (shipped settings but `max_concurrency`, one API key configured, as on a
shared network; on SQLite and the data folder, whatever this shell's store variables say, but for the
PostgreSQL + S3 run); the input file is uploaded once, then batches of it run one after another: alone,
under the heavy load, alone again (the machine drifts); the baseline is the mean of the two alone.

The load (load_clients.py): `clients` concurrent clients, one keep-alive connection each, a seeded pause
before each request, uniform in THINK_S: 0.5-1.5 s for the heavy load (about `clients` requests a second
offered); a mix of polling the running batch, listing batches, uploading a 3-line file and downloading a
finished 100-line batch's output. The load starts WARMUP_S before the batch is created (not counted) and
stops when the batch has completed, or after MAX_LOAD_S at the latest (the bound). For contrast, the
bench's own poller (one GET every 50 ms) times its requests while the batch runs alone.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import Api, log_events, session
from .latency import _upstream as latency_upstream
from .load_clients import LABELS, MIX, SMALL_LINES, WARMUP_S, LoadFigures, LoadGenerator, percentile
from .load_stores import StoresUnavailable, store_env
from .nginx import Nginx
from .procs import CpuMeter, FakeUpstream, Overnight
from .report import Section, cores
from .scaleout import LOCAL, REMOTE
from .workload import write_chat_file

CLIENTS = 200
# a client's pause before each request, uniform: 1 s on average (the goals' load)
THINK_S = {"heavy": (0.5, 1.5)}
MAX_LOAD_S = 120.0
P99_GOAL_MS = 100.0
RATIO_GOAL = 0.85
MODEL_LATENCY_MS = 50.0


@dataclass(frozen=True)
class Upstream:
    name: str
    latency_ms: float | None  # None: instant
    levels: tuple[str, ...]  # the load levels run on it (THINK_S keys)
    goals: bool  # its heavy load carries the goals
    remote: bool = False  # the server on PostgreSQL + S3, else SQLite + disk

    @property
    def key(self) -> str:
        """The run's name in the JSON and in its files' names."""
        return self.name + ("-postgres-s3" if self.remote else "")

    @property
    def title(self) -> str:
        return f"{self.name} upstream, {REMOTE if self.remote else LOCAL}"


UPSTREAMS = (
    Upstream("model-like", MODEL_LATENCY_MS, ("heavy",), goals=True),
    Upstream("model-like", MODEL_LATENCY_MS, ("heavy",), goals=True, remote=True),
    Upstream("instant", None, ("heavy",), goals=False),
)


@dataclass
class BatchFigures:
    """One batch of the input file: its rate from the server log (created -> completed)."""

    lines: int
    created_to_completed_s: float
    dispatch_s: float | None
    cores: dict[str, float]
    poll_ms: list[float] = field(default_factory=list, repr=False)  # the bench's own GETs of it, 20/s

    @property
    def rate(self) -> float:
        return self.lines / self.created_to_completed_s


@dataclass
class Level:
    name: str
    think_s: tuple[float, float]
    batch: BatchFigures
    load: LoadFigures


@dataclass
class UpstreamRun:
    upstream: Upstream
    kind: str  # what served it, in words
    stores: str  # what held the server's metadata and blobs, in words
    before: BatchFigures
    levels: list[Level]
    after: BatchFigures

    @property
    def alone(self) -> float:
        return (self.before.rate + self.after.rate) / 2


@dataclass
class Missing:
    """A run without figures: skipped (no PostgreSQL or SeaweedFS) or failed."""

    upstream: Upstream
    reason: str
    failed: bool


async def _one_batch(
    api: Api, server: Overnight, input_id: str, lines: int, watch: dict[str, list[int]]
) -> BatchFigures:
    meter = CpuMeter({"overnight": [server.pid], **watch}, main_thread_of=("overnight",)).start()
    batch = await api.create(input_id)
    polled = len(api.retrieve_ms)
    batch = await api.wait(batch["id"], lambda b: False)
    meter.stop()
    if batch["status"] != "completed" or batch["request_counts"]["completed"] != lines:
        raise RuntimeError(f"batch {batch['id']} ended {batch['status']}: {batch['request_counts']}")
    figures = _figures(server, batch["id"], lines, meter)
    figures.poll_ms = api.retrieve_ms[polled:]
    return figures


def _figures(server: Overnight, batch_id: str, lines: int, meter: CpuMeter) -> BatchFigures:
    events = log_events(server.log(), batch_id)
    if "created" not in events or "completed" not in events:
        raise RuntimeError(f"batch {batch_id}: no created/completed lines in the server log")
    dispatch = None
    if "in_progress" in events and "finalizing" in events:
        dispatch = events["finalizing"] - events["in_progress"]
    return BatchFigures(lines, events["completed"] - events["created"], dispatch, meter.cores())


async def _loaded_batch(
    api: Api, server: Overnight, input_id: str, lines: int, load: LoadGenerator, watch: dict[str, list[int]]
) -> tuple[BatchFigures, LoadFigures]:
    meter = CpuMeter({"overnight": [server.pid], **watch}, main_thread_of=("overnight",))
    load.start()
    try:
        await asyncio.sleep(WARMUP_S)
        meter.start()
        batch = await api.create(input_id)
        load.batch_id = batch["id"]
        bounded = asyncio.ensure_future(api.wait(batch["id"], lambda b: False))
        done, _ = await asyncio.wait({bounded}, timeout=MAX_LOAD_S)
        bound_reached = not done
    finally:
        figures = await load.stop()
    figures.bound_reached = bound_reached
    batch = await bounded  # after the bound the batch finishes unloaded; its rate says so
    meter.stop()
    if batch["status"] != "completed" or batch["request_counts"]["completed"] != lines:
        raise RuntimeError(f"batch {batch['id']} ended {batch['status']}: {batch['request_counts']}")
    return _figures(server, batch["id"], lines, meter), figures


def _start_upstream(upstream: Upstream) -> tuple[Nginx | FakeUpstream, str]:
    if upstream.latency_ms is None:
        return Nginx(), "nginx, answering at once"
    return latency_upstream(upstream.latency_ms)


async def _on_upstream(
    work: Path, upstream: Upstream, files: tuple[Path, Path], lines: int, clients: int, concurrency: int
) -> UpstreamRun:
    """One fresh server on `upstream` and its stores: alone, each load level, alone again."""
    async with store_env(work, f"load-{upstream.key}", remote=upstream.remote) as (env, store_pids, stores):
        served_by, kind = _start_upstream(upstream)
        print(f"bench: load: {upstream.title}: upstream is {kind}", file=sys.stderr, flush=True)
        env = {**env, "OVERNIGHT_API_KEYS": "bench=bench"}  # client.Api's token, as on a shared network
        with served_by:
            server = Overnight(work, f"load-{upstream.key}", served_by.base_url, concurrency, env=env)
            if upstream.remote:
                server.migrate()
            with server:
                watch = {"nginx" if isinstance(served_by, Nginx) else "fake upstream": served_by.pids}
                return await _measure(
                    upstream, server, {**watch, **store_pids}, kind, stores, files, lines, clients
                )


async def _measure(
    upstream: Upstream,
    server: Overnight,
    watch: dict[str, list[int]],
    kind: str,
    stores: str,
    files: tuple[Path, Path],
    lines: int,
    clients: int,
) -> UpstreamRun:
    """Alone, each load level, alone again, on a started server."""
    async with session() as http:
        api = Api(http, server.base_url)
        input_id = (await api.upload(files[0]))["id"]
        finished = await api.create((await api.upload(files[1]))["id"])
        finished = await api.wait(finished["id"], lambda b: False)
        before = await _one_batch(api, server, input_id, lines, watch)
        levels = []
        for name in upstream.levels:
            think = THINK_S[name]
            load = LoadGenerator(server.base_url, clients, finished["id"], finished["output_file_id"], think)
            levels.append(Level(name, think, *await _loaded_batch(api, server, input_id, lines, load, watch)))
        after = await _one_batch(api, server, input_id, lines, watch)
    return UpstreamRun(upstream, kind, stores, before, levels, after)


async def _run_or_missing(
    work: Path, upstream: Upstream, files: tuple[Path, Path], lines: int, clients: int, concurrency: int
) -> UpstreamRun | Missing:
    """The run; for the PostgreSQL + S3 one, Missing when its stores cannot be had or it fails."""
    try:
        return await _on_upstream(work, upstream, files, lines, clients, concurrency)
    except StoresUnavailable as exc:
        print(f"bench: load: {upstream.title} skipped: {exc}", file=sys.stderr, flush=True)
        return Missing(upstream, str(exc), failed=False)
    except Exception as exc:
        if not upstream.remote:
            raise
        traceback.print_exc()
        return Missing(upstream, f"{type(exc).__name__}: {exc}", failed=True)


async def run(work: Path, lines: int, clients: int = CLIENTS, concurrency: int = 64) -> Section:
    files = (work / "load.jsonl", work / "load-small.jsonl")
    write_chat_file(files[0], lines)
    write_chat_file(files[1], SMALL_LINES)
    try:
        runs = [await _run_or_missing(work, up, files, lines, clients, concurrency) for up in UPSTREAMS]
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    return _section(lines, clients, concurrency, runs)


def _section(lines: int, clients: int, concurrency: int, runs: list[UpstreamRun | Missing]) -> Section:
    section = Section(
        "load",
        f"load: a {lines:,}-line batch (concurrency {concurrency}) alone and while {clients} clients poll, "
        f"list, upload and download; at a model-like upstream ({MODEL_LATENCY_MS:g} ms, the goals) on "
        f"{LOCAL} and on {REMOTE}, and at an instant one on {LOCAL} (the CPU-bound contrast)",
    )
    data: dict[str, Any] = {}
    for one in runs:
        if isinstance(one, Missing):
            data[one.upstream.key] = _missing_rows(section, one)
        else:
            data[one.upstream.key] = _upstream_rows(section, one, clients, concurrency)
    section.notes.append(
        f"{clients} clients, one keep-alive connection each, a pause before each request (uniform, seeded: "
        + ", ".join(f"{name} {a:g}-{b:g} s" for name, (a, b) in THINK_S.items())
        + "); mix: "
        + ", ".join(f"{LABELS[k]} {share:.0%}" for k, share in MIX.items())
        + f"; the first {WARMUP_S:g} s not counted; the goals apply to the heavy load at the model-like "
        "upstream (a real model server answers in tens of ms or more; the instant upstream measures only "
        "the server's CPU, which the batch and the API share); on PostgreSQL + S3 the database's processes "
        "count in 'other processes'"
    )
    for one in runs:
        if isinstance(one, Missing):
            continue
        batches = [("alone, before", one.before), *((f"{lv.name} load", lv.batch) for lv in one.levels)]
        for name, batch in [*batches, ("alone, after", one.after)]:
            dispatch = f", dispatch phase {batch.dispatch_s:.1f} s" if batch.dispatch_s else ""
            section.notes.append(
                f"{one.upstream.title}: batch {name}: {batch.created_to_completed_s:.1f} s{dispatch}; "
                f"cores used: {cores(batch.cores)}"
            )
    section.data = {
        "lines": lines,
        "clients": clients,
        "concurrency": concurrency,
        "think_s": THINK_S,
        "mix": MIX,
        "upstreams": data,
        "goals": {
            "p99_ms": P99_GOAL_MS,
            "ratio": RATIO_GOAL,
            "errors": 0,
            "runs": [up.key for up in UPSTREAMS if up.goals],
        },
    }
    return section


def _missing_rows(section: Section, one: Missing) -> dict[str, Any]:
    up = one.upstream
    if one.failed:
        section.add(f"{up.title}: the goals", f"FAILED to run: {one.reason}", "a run", False)
    else:
        section.add(f"{up.title}: the goals", f"skipped: {one.reason}")
    return {"skipped": not one.failed, "failed": one.failed, "reason": one.reason}


def _upstream_rows(section: Section, one: UpstreamRun, clients: int, concurrency: int) -> dict[str, Any]:
    up = one.upstream
    if up.latency_ms is None:
        heading = f"{up.title} ({one.kind}): CPU-bound contrast, no goals"
    else:
        ideal = concurrency / (up.latency_ms / 1000)
        heading = f"{up.title} ({one.kind}, {up.latency_ms:g} ms): the goals; ideal {ideal:,.0f} lines/s"
    section.add(heading, "")
    if up.remote:
        section.notes.append(f"{up.title}: the server's stores: {one.stores}")
    section.add(
        "  batch alone, before / after (created -> completed)",
        f"{one.before.rate:,.0f} / {one.after.rate:,.0f} lines/s",
    )
    alone_polls = one.before.poll_ms + one.after.poll_ms
    if alone_polls:
        section.add(
            "  one poller's GET /v1/batches/{id} meanwhile: p50 / p99 (n)",
            f"{percentile(alone_polls, 0.5):,.1f} / {percentile(alone_polls, 0.99):,.1f} ms "
            f"({len(alone_polls):,})",
        )
    levels = {
        lv.name: _level_rows(section, lv, clients, one.alone, goals=up.goals and lv.name == "heavy")
        for lv in one.levels
    }
    return {
        "kind": one.kind,
        "stores": one.stores,
        "latency_ms": up.latency_ms,
        "goals": up.goals,
        "batch_before": _batch_data(one.before),
        "batch_after": _batch_data(one.after),
        "levels": levels,
    }


def _level_rows(section: Section, level: Level, clients: int, alone: float, *, goals: bool) -> dict[str, Any]:
    """The rows of one load level (with verdicts when `goals`; errors always); its figures for the JSON."""
    load, name = level.load, level.name
    offered = clients / ((level.think_s[0] + level.think_s[1]) / 2)
    served = load.counted / load.counted_s if load.counted_s else 0.0
    share = level.batch.rate / alone
    section.add(
        f"  {name} load: batch / its share of alone",
        f"{level.batch.rate:,.0f} lines/s / {share:.3f}",
        f">= {RATIO_GOAL}" if goals else "",
        share >= RATIO_GOAL if goals else None,
    )
    section.add(
        "    API requests counted (rate)", f"{load.counted:,} ({served:,.0f} req/s; ~{offered:,.0f} offered)"
    )
    stats: dict[str, dict[str, float]] = {}
    for kind, values in load.ms.items():
        if not values:
            section.add(f"    {LABELS[kind]}: p50 / p99", "n/a (no answers)", "", False if goals else None)
            continue
        p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
        stats[kind] = {"p50_ms": p50, "p99_ms": p99, "max_ms": max(values), "n": len(values)}
        section.add(
            f"    {LABELS[kind]}: p50 / p99 (n)",
            f"{p50:,.1f} / {p99:,.1f} ms ({len(values):,})",
            f"p99 < {P99_GOAL_MS:.0f} ms" if goals else "",
            p99 < P99_GOAL_MS if goals else None,
        )
    worst = max((s["p99_ms"] for s in stats.values()), default=0.0)
    section.add("    bound reached: the worst endpoint's p99", f"{worst:,.1f} ms")
    errors = sum(load.errors.values())
    section.add("    errors (non-2xx or exception)", f"{errors:,}", "0", errors == 0)
    if load.bound_reached:
        section.add("    load cut off by the bound before the batch ended", f"after {MAX_LOAD_S:.0f} s")
    if load.first_errors:
        section.notes.append(f"{name} load, first errors: " + "; ".join(load.first_errors))
    return {
        "batch": _batch_data(level.batch),
        "ratio_to_alone": share,
        "endpoints": stats,
        "errors": dict(load.errors),
        "requests_counted": load.counted,
        "counted_s": load.counted_s,
        "offered_rps": offered,
        "bound_reached": load.bound_reached,
    }


def _batch_data(batch: BatchFigures) -> dict[str, Any]:
    data = {name: value for name, value in vars(batch).items() if name != "poll_ms"}
    if batch.poll_ms:
        data["poll_p50_ms"] = percentile(batch.poll_ms, 0.5)
        data["poll_p99_ms"] = percentile(batch.poll_ms, 0.99)
    return data | {"rate": batch.rate}
