"""Sharing a model server with online traffic (issue 12): the measuring stick for `traffic = "background"`.

The upstream is `queue_upstream.py`: SLOTS requests served in parallel, SERVICE_MS each, a FIFO queue
beyond them and never a 429, as vLLM and its peers behave. An online client sends Poisson traffic at
half its capacity straight to it (not through Overnight), timing each request. Measured in one run:

(a) online p50/p99 with no batch: the baseline;
(b) the same online traffic while a big batch runs through `overnight serve` on today's backend
    (`max_concurrency` 128, which fills the upstream's queue): its p50/p99 over (a), shown for contrast;
(c) the batch's throughput during (b), from the upstream's own counts over the last three quarters of
    the online window, over the capacity the online traffic leaves idle (SLOTS / SERVICE_MS minus the
    online rate it served over the same span).

The goals the issue sets for the background mode are printed as "not built yet" rows, not verdicts.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, session
from .procs import CpuMeter, Overnight
from .queue_upstream import ONLINE_HEADER, QueueUpstream
from .report import Section, cores, ms, rate, ratio

SLOTS = 16
SERVICE_MS = 40.0
ONLINE_SHARE = 0.5  # of the upstream's capacity
MAX_CONCURRENCY = 128  # today's behaviour: the backend as `dedicated`
SEED = 20261201
STEADY_FROM = 0.25  # of the online window: the served rates are counted after it
GOAL_P99 = 1.2  # issue 12, background backend: online p99 <= 1.2x the baseline's
GOAL_THROUGHPUT = 0.85  # and the batch's throughput >= 0.85 of the idle capacity


def _body(index: int) -> bytes:
    message = {"role": "user", "content": f"question {index}: what is {index} + 2?"}
    return json.dumps({"model": "sim-chat", "messages": [message]}).encode()


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _summary(seconds: list[float], window_s: float) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": _percentile(ordered, 0.5) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "n": len(ordered),
        "sent_rps": len(ordered) / window_s,
    }


async def _online(url: str, rps: float, duration_s: float, seed: int) -> list[float]:
    """Open-loop Poisson arrivals at `rps` for `duration_s`, each request on its own task; latencies in
    seconds, from sending to the last byte of the answer."""
    arrivals = random.Random(seed)
    headers = {"Content-Type": "application/json", ONLINE_HEADER: "1"}
    latencies: list[float] = []

    async def one(http: aiohttp.ClientSession, index: int) -> None:
        started = time.perf_counter()
        async with http.post(url, data=_body(index), headers=headers) as answer:
            await answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url} answered {answer.status}")
        latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter()
        due = 0.0
        while due < duration_s:
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, len(tasks))))
            due += arrivals.expovariate(rps)
        await asyncio.gather(*tasks)
    return latencies


async def _served(root: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as http, http.get(f"{root}/_stats") as answer:
        counts: dict[str, int] = await answer.json()
        return counts


async def _steady_counts(root: str, duration_s: float) -> dict[str, float]:
    """Requests the upstream served, online and batch, per second over the arrivals' last three quarters:
    the first quarter is left out because the online requests reach the queue's end only after it."""
    await asyncio.sleep(duration_s * STEADY_FROM)
    before, started = await _served(root), time.perf_counter()
    await asyncio.sleep(duration_s * (1 - STEADY_FROM))
    after, span = await _served(root), time.perf_counter() - started
    return {
        "online_served_rps": (after["served_online"] - before["served_online"]) / span,
        "batch_served_rps": (after["served_batch"] - before["served_batch"]) / span,
        "steady_s": span,
    }


async def _measured(
    upstream: QueueUpstream, url: str, rps: float, duration_s: float, watch: dict[str, list[int]]
) -> dict[str, Any]:
    """The online traffic for `duration_s`, with the upstream's served counts and the CPUs meanwhile."""
    meter = CpuMeter(watch).start()
    latencies, counts = await asyncio.gather(
        _online(url, rps, duration_s, SEED), _steady_counts(upstream.root, duration_s)
    )
    meter.stop()
    return {**_summary(latencies, duration_s), **counts, "cores": meter.cores()}


def _batch_file(path: Path, lines: int) -> Path:
    with path.open("w") as out:
        for index in range(lines):
            body = json.loads(_body(index))
            line = {"custom_id": f"b{index}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")
    return path


async def _with_batch(
    work: Path, upstream: QueueUpstream, url: str, rps: float, duration_s: float, lines: int
) -> dict[str, Any]:
    server = Overnight(work, "shared", upstream.base_url, MAX_CONCURRENCY).start()
    try:
        async with session() as http:
            api = Api(http, server.base_url)
            uploaded = await api.upload(_batch_file(work / "shared-batch.jsonl", lines))
            batch = await api.create(uploaded["id"])
            # the batch fills its window before the online traffic starts
            await api.wait(batch["id"], lambda b: b["request_counts"]["completed"] >= MAX_CONCURRENCY)
            watch = {"overnight": [server.pid], "upstream": [upstream.process.pid]}
            found = await _measured(upstream, url, rps, duration_s, watch)
            during = await api.retrieve(batch["id"])
            found["batch_still_running_after"] = during["status"] == "in_progress"
            done = await api.wait(batch["id"], lambda b: False, 0.2)
            found["batch_status"] = done["status"]
            found["batch_completed"] = done["request_counts"]["completed"]
    finally:
        server.stop()
    found["batch_lines"] = lines
    return found


async def run(work: Path, duration_s: float, batch_lines: int) -> Section:
    section = Section("shared", "A model server shared with online traffic (issue 12): today's behaviour")
    with QueueUpstream(SLOTS, SERVICE_MS) as upstream:
        capacity = upstream.capacity_rps
        rps = capacity * ONLINE_SHARE
        url = f"{upstream.base_url}/chat/completions"
        await _online(url, rps, 1.0, SEED + 1)  # warm-up: connections, both processes' first requests
        watch = {"upstream": [upstream.process.pid]}
        idle = await _measured(upstream, url, rps, duration_s, watch)
        loaded = await _with_batch(work, upstream, url, rps, duration_s, batch_lines)
    idle_capacity = capacity - loaded["online_served_rps"]
    p50_x, p99_x = loaded["p50_ms"] / idle["p50_ms"], loaded["p99_ms"] / idle["p99_ms"]
    share = loaded["batch_served_rps"] / idle_capacity
    section.data.update(
        {"capacity_rps": capacity, "online_rps": rps, "idle": idle, "dedicated": loaded,
         "idle_capacity_rps": idle_capacity, "p99_ratio": p99_x, "throughput_share": share}
    )  # fmt: skip
    section.add("(a) online p50 / p99, no batch (baseline)", f"{ms(idle['p50_ms'])} / {ms(idle['p99_ms'])}")
    section.add(
        "(b) online p50 / p99, batch on today's backend (max_concurrency 128)",
        f"{ms(loaded['p50_ms'])} / {ms(loaded['p99_ms'])}",
    )
    section.add("(b) / (a): online p50", ratio(p50_x))
    section.add("(b) / (a): online p99", ratio(p99_x), "shown for contrast")
    section.add(
        "(c) batch throughput during (b) / idle capacity",
        f"{rate(loaded['batch_served_rps'])} / {rate(idle_capacity)} = {ratio(share)}",
        "shown for contrast",
    )
    section.add(
        "batch still running while measured; then ended",
        f"{loaded['batch_still_running_after']}; {loaded['batch_status']} "
        f"{loaded['batch_completed']}/{loaded['batch_lines']}",
        "True; completed",
        passed=loaded["batch_still_running_after"]
        and loaded["batch_status"] == "completed"
        and loaded["batch_completed"] == loaded["batch_lines"],
    )
    section.add("background backend: online p99 / (a)", "not built yet", f"<= {GOAL_P99}x (issue 12)")
    section.add(
        "background backend: batch throughput / idle capacity", "not built yet", f">= {GOAL_THROUGHPUT}"
    )
    section.notes.append(
        f"upstream: {SLOTS} slots x {SERVICE_MS:.0f} ms, FIFO queue, no 429 = {rate(capacity)}; online "
        f"Poisson at {rate(rps)} for {duration_s:.0f} s each (sent {idle['sent_rps']:.0f} / "
        f"{loaded['sent_rps']:.0f} req/s), straight to the upstream; batch {batch_lines} lines; idle "
        f"capacity = capacity - online served in (b) ({loaded['online_served_rps']:.0f} req/s), both counted "
        f"by the upstream over the window's last {1 - STEADY_FROM:.0%}; in (a) it served "
        f"{idle['online_served_rps']:.0f} online req/s"
    )
    served = loaded["online_served_rps"] + loaded["batch_served_rps"]
    section.notes.append(
        f"the upstream served {served:.0f} req/s in all during (b), against its nominal {capacity:.0f}: each "
        "slot's timer overshoots a little, which (c) counts against the batch"
    )
    section.notes.append(f"cores (a): {cores(idle['cores'])}")
    section.notes.append(f"cores (b): {cores(loaded['cores'])}")
    return section
