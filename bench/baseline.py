"""The bare client: aiohttp (on uvloop, like the bench) posting request bodies, with no bookkeeping.

It is the ceiling a batch runner on one Python process could reach against the same upstream: one
ClientSession, a TCPConnector limited to the concurrency, `concurrency` tasks posting the bodies in turn
and reading each answer. Nothing is parsed, stored or retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from .procs import CpuMeter

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True)
class BareResult:
    requests: int
    concurrency: int
    seconds: float
    errors: int
    cores: dict[str, float]  # average cores used over the run, per process group

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def bare_client(
    url: str, bodies: Sequence[bytes], concurrency: int, watch: dict[str, list[int]] | None = None
) -> BareResult:
    """POST every body to `url`, `concurrency` at a time; `watch`: processes whose CPU use to record."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    errors = 0
    pending = iter(bodies)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for body in pending:
            async with session.post(url, data=body) as response:
                await response.read()
                if response.status != 200:
                    errors += 1

    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        meter = CpuMeter(watch or {}).start()
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
        meter.stop()
    return BareResult(len(bodies), concurrency, seconds, errors, meter.cores())
