"""The `load` scenario's clients: `clients` concurrent API users on loopback, timed per endpoint.

Each client holds one keep-alive connection (asyncio + aiohttp in the bench process) and sends one
request after another with a random pause (seeded) before each, uniform in `think_s`. Each request is,
at random by MIX: `GET /v1/batches/{id}` of the running batch, `GET /v1/batches?limit=20`, an upload of a
small 3-line file, or the download of a finished 100-line batch's output file. Requests are timed from
sending to the last byte; the first WARMUP_S are not counted (they open the connections). Every answer
that is not a 2xx, and every exception (a timeout, a reset), counts as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

MIX = {"retrieve": 0.5, "list": 0.2, "upload": 0.1, "download": 0.2}
WARMUP_S = 2.0
REQUEST_TIMEOUT_S = 30.0
SMALL_LINES = 100  # the finished batch whose output the clients download
SEED = 20261213
UPLOAD_BODY = b"".join(
    b'{"custom_id":"up-%d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o-mini",'
    b'"messages":[{"role":"user","content":"hello"}]}}\n' % i
    for i in range(3)
)
LABELS = {
    "retrieve": "GET /v1/batches/{id}",
    "list": "GET /v1/batches?limit=20",
    "upload": "POST /v1/files (3 lines)",
    "download": f"GET /v1/files/{{id}}/content ({SMALL_LINES} lines)",
}


@dataclass
class LoadFigures:
    """What the clients saw: latencies per endpoint (counted ones only) and errors."""

    ms: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in MIX})
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    counted_s: float = 0.0
    bound_reached: bool = False
    first_errors: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors[what] += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(what)

    @property
    def counted(self) -> int:
        return sum(len(v) for v in self.ms.values()) + sum(self.errors.values())


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (0 < share <= 1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


class LoadGenerator:
    """The clients, run until stop(); requests are timed from sending to the last byte."""

    def __init__(
        self, base_url: str, clients: int, batch_id: str, output_file_id: str, think_s: tuple[float, float]
    ) -> None:
        self._base = base_url
        self._clients = clients
        self.think_s = think_s
        self.batch_id = batch_id  # what the clients poll: switched to the running batch when it exists
        self._output = output_file_id
        self._stop = asyncio.Event()
        self._counting_from = 0.0
        self.figures = LoadFigures()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._counting_from = time.perf_counter() + WARMUP_S
        rng = random.Random(SEED)
        self._tasks = [
            asyncio.create_task(self._client(random.Random(rng.random()))) for _ in range(self._clients)
        ]

    async def stop(self) -> LoadFigures:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self.figures.counted_s = max(0.0, time.perf_counter() - self._counting_from)
        return self.figures

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _client(self, rng: random.Random) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=1)
        kinds, weights = list(MIX), list(MIX.values())
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            await self._pause(rng.uniform(0, self.think_s[1]))  # the clients don't all start at once
            while not self._stop.is_set():
                kind = rng.choices(kinds, weights)[0]
                started = time.perf_counter()
                try:
                    status = await self._call(http, kind)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status, problem = None, f"{kind}: {type(exc).__name__} {exc}".strip()
                elapsed_ms = (time.perf_counter() - started) * 1000
                self.figures.sent += 1
                if started >= self._counting_from:
                    if status is None:
                        self.figures.error(problem)
                    elif not 200 <= status < 300:
                        self.figures.error(f"{kind}: HTTP {status}")
                    else:
                        self.figures.ms[kind].append(elapsed_ms)
                await self._pause(rng.uniform(*self.think_s))

    async def _call(self, http: aiohttp.ClientSession, kind: str) -> int:
        headers = {"Authorization": "Bearer bench"}
        if kind == "retrieve":
            request = http.get(f"{self._base}/batches/{self.batch_id}", headers=headers)
        elif kind == "list":
            request = http.get(f"{self._base}/batches?limit=20", headers=headers)
        elif kind == "download":
            request = http.get(f"{self._base}/files/{self._output}/content", headers=headers)
        else:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", UPLOAD_BODY, filename="small.jsonl", content_type="application/jsonl")
            request = http.post(f"{self._base}/files", data=form, headers=headers)
        async with request as answer:
            await answer.read()
            return answer.status
