"""Randomized kill soak: kill -9 the server at random moments of one batch, again and again.

Not a speed figure but a durability one, kept out of the fast test suite: whatever phase each kill
lands in (validation, dispatch, a group commit, finalization, after completion), once the batch is
done every custom_id must be in the output file exactly once, and no line may have run more often
than the kills could explain.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, session
from .procs import FakeUpstream, Overnight
from .report import Section
from .workload import check_output, write_chat_file

CONCURRENCY = 32
LATENCY_MS = 5.0
FLUSH_S = 0.05


async def _wait_done(server: Overnight, batch_id: str) -> tuple[dict[str, Any], bytes]:
    async with session() as http:
        api = Api(http, server.base_url)
        batch = await api.wait(batch_id, lambda b: False)
        output = await api.content(batch["output_file_id"]) if batch.get("output_file_id") else b""
    return batch, output


async def run(work: Path, requests: int, kills: int, seed: int) -> Section:
    path = work / "soak.jsonl"
    write_chat_file(path, requests, keys=True)
    rng = random.Random(seed)
    moments: list[str] = []
    with FakeUpstream("--latency-ms", str(LATENCY_MS)) as upstream:
        server = Overnight(
            work, "soak", upstream.base_url, CONCURRENCY, result_flush_interval_s=FLUSH_S
        ).start()
        try:
            async with session() as http:
                api = Api(http, server.base_url)
                batch = await api.create((await api.upload(path))["id"])
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                moments.append(await _status(server, batch["id"]))
                server.kill9()
                server.start()
            batch, output = await _wait_done(server, batch["id"])
            final = upstream.stats()
        finally:
            server.stop()
    path.unlink()
    return _section(requests, kills, seed, moments, batch, output, final)


async def _status(server: Overnight, batch_id: str) -> str:
    """Where the batch stands just before a kill (for the report)."""
    try:
        async with session() as http:
            batch = await Api(http, server.base_url).retrieve(batch_id)
    except aiohttp.ClientError:
        return "unknown"
    counts = batch["request_counts"]
    return f"{batch['status']} {counts['completed']}/{counts['total']}"


def _section(
    requests: int,
    kills: int,
    seed: int,
    moments: list[str],
    batch: dict[str, Any],
    output: bytes,
    final: dict[str, Any],
) -> Section:
    by_key: dict[str, int] = final["by_key"]
    extra_runs = sum(n - 1 for n in by_key.values() if n > 1)
    never_ran = sum(1 for i in range(requests) if f"k{i}" not in by_key)
    check = check_output(output, requests)
    # Each kill may lose what was in flight plus what finished since the last group commit.
    bound = kills * (CONCURRENCY + int(requests * FLUSH_S))
    section = Section(
        "soak",
        f"6. kill soak: {requests:,} requests at a {LATENCY_MS:g} ms upstream, {kills} kill -9 at random "
        f"moments (seed {seed}), restarting each time",
    )
    section.add("batch status at the kills", "; ".join(moments))
    section.add("final batch status", str(batch["status"]), "completed", batch["status"] == "completed")
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete, no duplicates",
        check.ok and check.lines == requests,
    )
    section.add("lines the upstream never executed", f"{never_ran:,}", "0", never_ran == 0)
    section.add("extra upstream executions", f"{extra_runs:,}", f"<= {bound:,}", extra_runs <= bound)
    section.data = {
        "requests": requests,
        "kills": kills,
        "seed": seed,
        "moments": moments,
        "extra_executions": extra_runs,
        "never_executed": never_ran,
        "output": vars(check),
        "status": batch["status"],
    }
    return section
