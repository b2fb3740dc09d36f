"""The synchronous endpoints (docs/sync.md): what Overnight adds to a request's latency, and what an
online request's latency becomes while a batch saturates its backend.

Overhead: `rounds` sequential `POST /v1/chat/completions` straight to the fake upstream and through
Overnight (one keep-alive connection each, the same bodies, alternating in blocks), twice: with the fake
answering at once (Overnight's own cost) and after 50 ms (a model's latency). Streaming too: the same
request with `stream: true`, whole stream read.

Under load: a server with `max_concurrency` 8 and a batch of `batch_lines` lines each answered after
50 ms, so the backend is full (8 in flight, the rest queued) for `batch_lines * 0.05 / 8` s. While it
runs, the same online requests one after another (a random pause of up to 50 ms before each, so they
do not fall in step with the batch's round trips); their latency against the idle one measured on the
same server just before (a ratio in the same run), and beside it how long the batch's queue would have
made them wait behind it. Flex requests too, which queue with the batch by deadline (now + 300 s, before
the batch's 24 h): they go next as well, but after any online one.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, session
from .procs import FakeUpstream, Overnight
from .report import Section, ms, ratio

LATENCY_MS = 50.0
MAX_CONCURRENCY = 8
SEED = 20261201
SLACK_MS = 10.0  # for the CPUs the batch keeps busy meanwhile
BLOCK = 20  # requests per block; direct and through Overnight alternate block by block


def _body(index: int, *, delay_ms: float, stream: bool = False, tier: str | None = None) -> bytes:
    body: dict[str, Any] = {
        "model": "fake-chat",
        "messages": [{"role": "user", "content": f"question {index}: what is {index} + 2?"}],
    }
    if delay_ms:
        body["fake"] = {"delay_ms": delay_ms}
    if stream:
        body["stream"] = True
    if tier is not None:
        body["service_tier"] = tier
    return json.dumps(body).encode()


async def _one(http: aiohttp.ClientSession, url: str, body: bytes) -> float:
    """Seconds from sending to the last byte of the answer (a stream read to its end)."""
    headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
    started = time.perf_counter()
    async with http.post(url, data=body, headers=headers) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url} answered {answer.status}")
    return time.perf_counter() - started


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p95_ms": p95 * 1000, "n": len(ordered)}


async def _compare(direct: str, proxied: str, rounds: int, **body: Any) -> dict[str, dict[str, float]]:
    """Sequential requests, alternating blocks of direct and proxied (one connection each)."""
    times: dict[str, list[float]] = {"direct": [], "overnight": []}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as other,
    ):
        for warm in range(3):  # connections and the server's first-request costs
            await _one(one, direct, _body(warm, **body))
            await _one(other, proxied, _body(warm, **body))
        for start in range(0, rounds, BLOCK):
            for index in range(start, min(start + BLOCK, rounds)):
                times["direct"].append(await _one(one, direct, _body(index, **body)))
            for index in range(start, min(start + BLOCK, rounds)):
                times["overnight"].append(await _one(other, proxied, _body(index, **body)))
    return {name: _summary(values) for name, values in times.items()}


def _batch_file(path: Path, lines: int) -> Path:
    with path.open("w") as out:
        for index in range(lines):
            body = json.loads(_body(index, delay_ms=LATENCY_MS))
            line = {"custom_id": f"b{index}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")
    return path


async def _sequential(url: str, count: int, **body: Any) -> list[float]:
    """One request after another, each after a random pause of up to one upstream latency (seeded), so
    that they arrive at any moment of the batch's round trips, as independent clients would, rather than
    in step with them."""
    pauses = random.Random(SEED)
    times = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        await _one(http, url, _body(0, **body))
        for index in range(count):
            await asyncio.sleep(pauses.uniform(0, LATENCY_MS / 1000))
            times.append(await _one(http, url, _body(index, **body)))
    return times


async def _under_load(work: Path, upstream: str, lines: int, online: int) -> dict[str, Any]:
    server = Overnight(work, "sync-load", upstream, MAX_CONCURRENCY).start()
    url = f"{server.base_url}/chat/completions"
    try:
        idle = await _sequential(url, online, delay_ms=LATENCY_MS)
        idle_flex = await _sequential(url, online, delay_ms=LATENCY_MS, tier="flex")
        async with session() as http:
            api = Api(http, server.base_url)
            uploaded = await api.upload(_batch_file(work / "sync-batch.jsonl", lines))
            batch = await api.create(uploaded["id"])
            batch = await api.wait(batch["id"], lambda b: b["request_counts"]["completed"] >= MAX_CONCURRENCY)
            loaded_at = batch["request_counts"]["completed"]
            loaded = await _sequential(url, online, delay_ms=LATENCY_MS)
            loaded_flex = await _sequential(url, online, delay_ms=LATENCY_MS, tier="flex")
            during = await api.retrieve(batch["id"])
            still_running = during["status"] == "in_progress"
            queued = lines - during["request_counts"]["completed"]
            await api.wait(batch["id"], lambda b: False, 0.2)
    finally:
        server.stop()
    return {
        "idle": _summary(idle),
        "loaded": _summary(loaded),
        "idle_flex": _summary(idle_flex),
        "loaded_flex": _summary(loaded_flex),
        "batch_lines": lines,
        "completed_when_measuring": loaded_at,
        "queued_after_measuring": queued,
        "batch_still_running_after": still_running,
        "queue_wait_ms": (lines - loaded_at) * LATENCY_MS / MAX_CONCURRENCY,  # when they began
    }


async def run(work: Path, rounds: int, batch_lines: int) -> Section:
    section = Section("sync", "Synchronous requests: overhead, and online latency while a batch saturates")
    with FakeUpstream() as fake:
        server = Overnight(work, "sync", fake.base_url, 64).start()
        try:
            direct, proxied = f"{fake.base_url}/chat/completions", f"{server.base_url}/chat/completions"
            instant = await _compare(direct, proxied, rounds, delay_ms=0)
            model = await _compare(direct, proxied, rounds, delay_ms=LATENCY_MS)
            streamed = await _compare(direct, proxied, rounds, delay_ms=0, stream=True)
        finally:
            server.stop()
        load = await _under_load(work, fake.base_url, batch_lines, max(20, rounds // 4))
    section.data.update({"instant": instant, "latency_50ms": model, "stream": streamed, "under_load": load})
    for name, found in (("instant upstream", instant), (f"{LATENCY_MS:.0f} ms upstream", model)):
        added = found["overnight"]["p50_ms"] - found["direct"]["p50_ms"]
        section.add(
            f"{name}: p50 direct / through Overnight",
            f"{ms(found['direct']['p50_ms'])} / {ms(found['overnight']['p50_ms'])}",
        )
        section.add(f"{name}: Overnight adds (p50)", f"{added:.2f} ms", "< 5 ms", passed=added < 5.0)
    section.add(
        "stream, instant upstream: p50 direct / through Overnight",
        f"{streamed['direct']['p50_ms']:.1f} / {streamed['overnight']['p50_ms']:.1f} ms",
    )
    idle, loaded = load["idle"]["p50_ms"], load["loaded"]["p50_ms"]
    section.add("online p50: idle / batch saturating the backend", f"{ms(idle)} / {ms(loaded)}")
    section.add("online p50 under load / idle", ratio(loaded / idle))
    section.add(
        "online p50 under load - idle",
        f"{loaded - idle:.1f} ms",
        f"<= {LATENCY_MS + SLACK_MS:.0f} ms (one slot to free + {SLACK_MS:.0f})",
        passed=loaded - idle <= LATENCY_MS + SLACK_MS,
    )
    section.add("online p95 under load", ms(load["loaded"]["p95_ms"]))
    section.add(
        "flex p50: idle / under load",
        f"{ms(load['idle_flex']['p50_ms'])} / {ms(load['loaded_flex']['p50_ms'])}",
    )
    section.add(
        "behind the batch's queue they would have waited (its lines left when they began x 50 ms / 8)",
        ms(load["queue_wait_ms"]),
        "batch still running while measured",
        passed=load["batch_still_running_after"],
    )
    section.notes.append(
        f"{rounds} sequential requests each way per row, alternating blocks of {BLOCK}; one keep-alive "
        f"connection each; under load: max_concurrency {MAX_CONCURRENCY}, {batch_lines} batch lines at "
        f"{LATENCY_MS:.0f} ms, the online and flex requests one after another while it ran"
    )
    return section
