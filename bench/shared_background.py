"""The `shared` scenario's background phases (issue 12): the same upstream and online traffic as (a) and
(b), with the batch on a `traffic = "background"` backend, (c) with the upstream's load signal and (d) with
the delay signal alone; then (e) the window's step response to online traffic that starts and stops.

Each of (c) and (d) starts the online traffic, then the batch, lets the window settle (SETTLE_S) and then
measures as (b) does: the online latencies and the upstream's served counts over the same span. The
transient when online traffic arrives on a full window is what (e) measures, from Overnight's own
`overnight_background_window` gauge polled every POLL_S.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, session
from .procs import CpuMeter, Overnight

SETTLE_S = 20.0  # after the batch's first answers, before measuring (the delay signal's slow start)
POLL_S = 0.1
STEP_IDLE_S = 8.0  # (e): no online traffic, then ...
STEP_LOADED_S = 12.0  # ... online at half the capacity, then none again for as long
STEP_S = STEP_IDLE_S + 2 * STEP_LOADED_S
SETTLED_BAND = 0.25  # (e): the window has settled once within this share of the phase's final level
TARGET_QUEUE_DELAY_MS = 20.0  # the default: 5 % of the simulated 0.4 s request
LOAD_METRICS_INTERVAL_S = 0.25  # (c), (e): the default on a background backend
MAX_CONCURRENCY = 128


def background_server(
    work: Path, name: str, upstream_base: str, with_load: bool, headroom: int = 0
) -> Overnight:
    backend: dict[str, float | str] = {
        "traffic": "background",
        "target_queue_delay_ms": TARGET_QUEUE_DELAY_MS,
    }
    if with_load:
        backend["load_metrics_url"] = upstream_base.removesuffix("/v1") + "/metrics"
        backend["load_metrics_interval_s"] = LOAD_METRICS_INTERVAL_S
        backend["occupancy_headroom"] = headroom
    server = Overnight(work, name, upstream_base, MAX_CONCURRENCY)
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in backend.items())
    server.config.write_text(server.config.read_text() + extra)  # the last table is its [[backends]]
    return server


async def window_of(http: aiohttp.ClientSession, root: str) -> float | None:
    async with http.get(f"{root}/metrics") as answer:
        text = await answer.text()
    for line in text.splitlines():
        if line.startswith("overnight_background_window{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def measured_background(
    work: Path,
    name: str,
    upstream: Any,
    with_load: bool,
    batch_file: Path,
    lines: int,
    online: Any,
    counts: Any,
    duration_s: float,
    headroom: int = 0,
) -> dict[str, Any]:
    """(c) or (d): online traffic first, the batch created with it, measured after SETTLE_S for
    `duration_s`. `online(duration_s, count_from_s)` (latencies of the requests sent from `count_from_s`)
    and `counts(from_s, duration_s)` (the upstream's served rates) are the scenario's own measures;
    `headroom`: the load signal's `occupancy_headroom`."""
    server = background_server(work, name, upstream.base_url, with_load, headroom).start()
    windows: list[float] = []
    try:
        async with session() as http:
            api = Api(http, server.base_url)
            uploaded = await api.upload(batch_file)
            watch = {"overnight": [server.pid], "upstream": [upstream.process.pid]}
            meter = CpuMeter(watch)
            traffic = asyncio.create_task(online(SETTLE_S + duration_s, SETTLE_S))
            served = asyncio.create_task(counts(SETTLE_S, duration_s))
            batch = await api.create(uploaded["id"])
            watcher = asyncio.create_task(_watch(http, server.root, windows, SETTLE_S))
            await asyncio.sleep(SETTLE_S)
            meter.start()
            latencies, rates = await asyncio.gather(traffic, served)
            meter.stop()
            watcher.cancel()
            during = await api.retrieve(batch["id"])
            done = await api.wait(batch["id"], lambda b: False, 0.2)
    finally:
        server.stop()
    found: dict[str, Any] = {**latencies, **rates, "cores": meter.cores()}
    found["batch_still_running_after"] = during["status"] == "in_progress"
    found["batch_status"] = done["status"]
    found["batch_completed"] = done["request_counts"]["completed"]
    found["batch_lines"] = lines
    found["window_median"] = statistics.median(windows) if windows else None
    found["window_range"] = (min(windows), max(windows)) if windows else None
    return found


async def _watch(http: aiohttp.ClientSession, root: str, into: list[float], after_s: float) -> None:
    await asyncio.sleep(after_s)
    while True:
        value = await window_of(http, root)
        if value is not None:
            into.append(value)
        await asyncio.sleep(POLL_S)


async def step_response(
    work: Path, upstream: Any, batch_file: Path, online: Any, with_load: bool
) -> dict[str, Any]:
    """(e): the batch runs alone, then online traffic at half the capacity starts, then stops; the
    window's trace, and how long after each step it took to come within SETTLED_BAND of the level it
    settled at (the median of each phase's second half)."""
    server = background_server(work, "shared-step", upstream.base_url, with_load).start()
    trace: list[tuple[float, float]] = []
    try:
        async with session() as http:
            api = Api(http, server.base_url)
            uploaded = await api.upload(batch_file)
            batch = await api.create(uploaded["id"])
            await api.wait(batch["id"], lambda b: b["request_counts"]["completed"] >= 50)
            start = time.perf_counter()

            async def watch() -> None:
                while True:
                    value = await window_of(http, server.root)
                    if value is not None:
                        trace.append((time.perf_counter() - start, value))
                    await asyncio.sleep(POLL_S)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(STEP_IDLE_S)
            await online(STEP_LOADED_S, 0.0)
            await asyncio.sleep(STEP_LOADED_S)
            watcher.cancel()
            during = await api.retrieve(batch["id"])
    finally:
        server.stop()
    on_at, off_at = STEP_IDLE_S, STEP_IDLE_S + STEP_LOADED_S
    idle_level = _level(trace, on_at / 2, on_at)
    loaded_level = _level(trace, on_at + STEP_LOADED_S / 2, off_at)
    back_level = _level(trace, off_at + STEP_LOADED_S / 2, off_at + STEP_LOADED_S)
    return {
        "trace": trace,
        "idle_window": idle_level,
        "loaded_window": loaded_level,
        "back_window": back_level,
        "shrink_s": _settled_after(trace, on_at, loaded_level),
        "grow_s": _settled_after(trace, off_at, back_level),
        "batch_running": during["status"] == "in_progress",
    }


def _level(trace: list[tuple[float, float]], start: float, end: float) -> float | None:
    values = [value for at, value in trace if start <= at < end]
    return statistics.median(values) if values else None


def _settled_after(trace: list[tuple[float, float]], step_at: float, level: float | None) -> float | None:
    """Seconds from the step until the window first comes within SETTLED_BAND of `level`."""
    if level is None:
        return None
    for at, value in trace:
        if at >= step_at and abs(value - level) <= max(1.0, SETTLED_BAND * level):
            return at - step_at
    return None
