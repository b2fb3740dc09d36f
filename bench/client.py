"""Driving Overnight through its HTTP API as a client does, and reading the phases from its log."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from .procs import CpuMeter, Overnight
from .workload import ENDPOINT, OutputCheck, check_output

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
POLL_S = 0.05
STALL_S = 60.0
_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (?:batch (\w+)|file (uploaded)) id=(\S+)", re.M
)

Batch = dict[str, Any]


def _open(path: Path) -> BinaryIO:
    return path.open("rb")


class Api:
    """The few calls of the Files and Batches APIs the bench needs."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url
        self._headers = {"Authorization": "Bearer bench"}
        self.retrieve_ms: list[float] = []  # the latency of each GET /batches/{id}, in order
        self.progress: list[tuple[float, int]] = []  # (Unix time, lines with a result) at each GET

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        async with self._session.request(method, self._base + path, headers=self._headers, **kwargs) as r:
            payload: dict[str, Any] = await r.json()
            if r.status != 200:
                raise RuntimeError(f"{method} {path} answered {r.status}: {payload}")
            return payload

    async def upload(self, path: Path) -> dict[str, Any]:
        with _open(path) as content:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", content, filename=path.name, content_type="application/jsonl")
            return await self._json("POST", "/files", data=form)

    async def create(self, input_file_id: str, endpoint: str = ENDPOINT) -> Batch:
        payload = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h"}
        return await self._json("POST", "/batches", json=payload)

    async def retrieve(self, batch_id: str) -> Batch:
        started = time.perf_counter()
        batch = await self._json("GET", f"/batches/{batch_id}")
        self.retrieve_ms.append((time.perf_counter() - started) * 1000)
        counts = batch["request_counts"]
        self.progress.append((time.time(), counts["completed"] + counts["failed"]))
        return batch

    async def wait(self, batch_id: str, until: Callable[[Batch], bool], poll_s: float = POLL_S) -> Batch:
        """Poll until `until(batch)` or the batch ends; raise if it makes no progress for STALL_S."""
        seen: tuple[object, ...] = ()
        progress = time.monotonic()
        while True:
            batch = await self.retrieve(batch_id)
            if until(batch) or batch["status"] in TERMINAL:
                return batch
            state = (batch["status"], batch["request_counts"]["completed"], batch["request_counts"]["failed"])
            if state != seen:
                seen, progress = state, time.monotonic()
            elif time.monotonic() - progress > STALL_S:
                raise RuntimeError(f"batch {batch_id} made no progress for {STALL_S:g} s: {state}")
            await asyncio.sleep(poll_s)

    async def content(self, file_id: str) -> bytes:
        url = f"{self._base}/files/{file_id}/content"
        async with self._session.get(url, headers=self._headers) as response:
            response.raise_for_status()
            return await response.read()


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600))


# -- the server's log ---------------------------------------------------------------------------------


def log_events(log: str, *ids: str) -> dict[str, float]:
    """Unix time of each 'batch <status>' / 'file uploaded' line about `ids` (the log has milliseconds)."""
    events: dict[str, float] = {}
    for stamp, status, uploaded, about in _LOG_LINE.findall(log):
        if about in ids:
            events[status or uploaded] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return events


def _span_ms(events: dict[str, float], start: str, end: str) -> float | None:
    if start in events and end in events:
        return round((events[end] - events[start]) * 1000, 1)
    return None


# -- one batch, end to end ----------------------------------------------------------------------------


@dataclass
class BatchRun:
    requests: int
    file_bytes: int
    total_s: float  # upload start -> output downloaded
    phases_ms: dict[str, float | None]  # client and server phases, in order
    check: OutputCheck
    error_lines: int
    peak_rss_mb: float
    cores: dict[str, float]
    batch: Batch = field(repr=False)
    poll_ms: list[float] = field(default_factory=list, repr=False)  # each GET /batches/{id}, while it ran
    progress: list[tuple[float, int]] = field(default_factory=list, repr=False)  # Api.progress

    @property
    def rps(self) -> float:
        return self.requests / self.total_s

    def summary(self) -> dict[str, object]:
        return {
            "rps": self.rps,
            "total_s": self.total_s,
            "file_bytes": self.file_bytes,
            "phases_ms": self.phases_ms,
            "output": vars(self.check),
            "error_lines": self.error_lines,
            "peak_rss_mb": self.peak_rss_mb,
            "cores": self.cores,
            "request_counts": self.batch.get("request_counts"),
        }

    def phase_s(self, name: str) -> float | None:
        value = self.phases_ms.get(name)
        return None if value is None else value / 1000


async def run_batch(
    server: Overnight,
    path: Path,
    requests: int,
    watch: dict[str, list[int]] | None = None,
    *,
    endpoint: str = ENDPOINT,
    poll_s: float = POLL_S,
    workers: Sequence[Overnight] = (),
) -> BatchRun:
    """Upload, create, poll every `poll_s` until the batch ends, download its output (and error) file.
    `workers`: the processes that run the batch when `server` is an API server alone; the batch's phases
    are read from their logs and the server's together."""
    meter = CpuMeter({"overnight": [server.pid], **(watch or {})}, main_thread_of=("overnight",))
    async with session() as http:
        api = Api(http, server.base_url)
        meter.start()
        t0 = time.time()
        uploaded = await api.upload(path)
        t_uploaded = time.time()
        batch = await api.create(uploaded["id"], endpoint)
        t_created = time.time()
        batch = await api.wait(batch["id"], lambda b: False, poll_s)
        t_seen = time.time()
        output = await api.content(batch["output_file_id"]) if batch.get("output_file_id") else b""
        t_done = time.time()
        meter.stop()
        errors = await api.content(batch["error_file_id"]) if batch.get("error_file_id") else b""
    logs = "\n".join(process.log() for process in (server, *workers))
    events = log_events(logs, batch["id"], uploaded["id"])
    phases: dict[str, float | None] = {
        "upload": round((t_uploaded - t0) * 1000, 1),
        "create": round((t_created - t_uploaded) * 1000, 1),
        "validation": _span_ms(events, "created", "in_progress"),
        "dispatch": _span_ms(events, "in_progress", "finalizing"),
        "finalization": _span_ms(events, "finalizing", "completed"),
        "noticed": round((t_seen - events["completed"]) * 1000, 1) if "completed" in events else None,
        "download": round((t_done - t_seen) * 1000, 1),
    }
    if batch["status"] != "completed":
        raise RuntimeError(f"batch ended {batch['status']}: {batch.get('errors')}")
    return BatchRun(
        requests=requests,
        file_bytes=uploaded["bytes"],
        total_s=t_done - t0,
        phases_ms=phases,
        check=check_output(output, requests),
        error_lines=len(errors.splitlines()),
        peak_rss_mb=round(server.peak_rss_mb(), 1),
        cores=meter.cores(),
        batch=batch,
        poll_ms=api.retrieve_ms,
        progress=api.progress,
    )
