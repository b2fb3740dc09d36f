"""3. Ingest: upload and validation speed, and the server's peak memory for a small and a large file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from support.server import free_port

from .client import Api, log_events, session
from .procs import Overnight
from .report import Section, ms
from .workload import write_sized_file

GOAL_MB_S = 100.0
GOAL_RSS_SPREAD_MB = 50.0
MB = 1_000_000


@dataclass(frozen=True)
class Ingest:
    lines: int
    bytes: int
    upload_s: float
    validation_s: float
    idle_rss_mb: float
    peak_rss_mb: float

    @property
    def validation_mb_s(self) -> float:
        return self.bytes / MB / self.validation_s

    @property
    def upload_mb_s(self) -> float:
        return self.bytes / MB / self.upload_s

    @property
    def ingest_mb_s(self) -> float:
        return self.bytes / MB / (self.upload_s + self.validation_s)


async def _one(work: Path, total_bytes: int, lines: int) -> Ingest:
    path = work / f"ingest-{lines}.jsonl"
    size = write_sized_file(path, lines, total_bytes)
    # Nothing listens on the upstream port: the batch is only validated here. Once it is in progress
    # its first requests fail to connect and wait to retry, which costs the server next to nothing.
    upstream = f"http://127.0.0.1:{free_port()}/v1"
    with Overnight(work, f"ingest-{lines}", upstream, 64) as server:
        idle = server.rss_mb()
        async with session() as http:
            api = Api(http, server.base_url)
            start = time.time()
            uploaded = await api.upload(path)
            upload_s = time.time() - start
            batch = await api.create(uploaded["id"])
            batch = await api.wait(batch["id"], lambda b: b["status"] != "validating", poll_s=0.02)
            peak = server.peak_rss_mb()
        if batch["status"] != "in_progress":
            raise RuntimeError(f"the ingest batch ended {batch['status']}: {batch.get('errors')}")
        events = log_events(server.log(), batch["id"])
    path.unlink()
    validation_s = events["in_progress"] - events["created"]
    return Ingest(lines, size, upload_s, validation_s, round(idle, 1), round(peak, 1))


async def run(work: Path, sizes: list[tuple[int, int]]) -> Section:
    """`sizes`: (bytes, lines) of each file, smallest first; each gets a fresh server."""
    results = [await _one(work, total, lines) for total, lines in sizes]
    section = Section("ingest", "3. ingest: upload + validation, a fresh server per file")
    for one in results:
        label = f"{one.bytes / MB:,.0f} MB / {one.lines:,} lines"
        section.add(f"{label}: upload", f"{one.upload_mb_s:,.0f} MB/s")
        section.add(f"{label}: upload time", ms(one.upload_s * 1000))
        section.add(f"{label}: validation time", ms(one.validation_s * 1000))
        section.add(
            f"{label}: validation",
            f"{one.validation_mb_s:,.0f} MB/s",
            f">= {GOAL_MB_S:g} MB/s",
            one.validation_mb_s >= GOAL_MB_S if one is results[-1] else None,
        )
        section.add(f"{label}: upload + validation", f"{one.ingest_mb_s:,.0f} MB/s")
        section.add(
            f"{label}: server RSS idle -> peak", f"{one.idle_rss_mb:,.0f} -> {one.peak_rss_mb:,.0f} MB"
        )
    if len(results) > 1:
        spread = results[-1].peak_rss_mb - results[0].peak_rss_mb
        section.add(
            "peak RSS, largest minus smallest file",
            f"{spread:+,.0f} MB",
            f"<= {GOAL_RSS_SPREAD_MB:g} MB",
            spread <= GOAL_RSS_SPREAD_MB,
        )
    section.notes.append(
        "validation = 'batch created' -> 'batch in_progress' in the server log (includes the worker's "
        "pick-up); peak RSS = VmHWM read as soon as the client sees in_progress"
    )
    section.data = {"files": [vars(one) | {"validation_mb_s": one.validation_mb_s} for one in results]}
    return section
