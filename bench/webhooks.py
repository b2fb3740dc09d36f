"""Webhook delivery never slows the engine: one workload, without webhooks, to a fast and to a hung receiver.

The same 20 chat batches (instant fake upstream) run through a real `overnight serve` three ways: with no
`[[webhooks]]` (the baseline); with one endpoint on a loopback receiver that answers 200 at once; and with
one on a receiver that accepts the connection and never answers, so every attempt runs into the short
`webhook_timeout_s` and is retried soon (`webhook_retry_base_s`): the sender's worst case. Each way runs
ROUNDS times in ABC CBA ABC order, on a fresh server each time, and the best run of each counts. The
figure is the end-to-end time (the first batch's `batch created` to the last one's `batch completed`,
from the server's log) against the baseline's. The fast receiver's deliveries are counted per event id
and each is verified with the `openai` SDK's `client.webhooks.unwrap`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web

from .client import Api, log_events, session
from .procs import CpuMeter, FakeUpstream, Overnight
from .report import Section, cores, ms, ratio
from .workload import write_chat_file

GOAL = 1.1
BATCHES = 20
ROUNDS = 3  # ABC CBA ABC: a run's time varies by up to a second on its own, so the best of each counts
CONCURRENCY = 64
TIMEOUT_S = 1.0  # webhook_timeout_s: every attempt at the hanging receiver fails after this
RETRY_BASE_S = 0.5  # webhook_retry_base_s: failed attempts come back soon, again and again
DELIVERY_WAIT_S = 30.0  # after the last batch, for the fast receiver's last deliveries
SECRET_ENV = "OVERNIGHT_BENCH_WEBHOOK_SECRET"
VARIANTS = ("none", "fast", "hanging")
_ATTEMPTS = re.compile(r'^overnight_webhook_attempts_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)$', re.M)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Receipt:
    body: bytes
    headers: dict[str, str]
    at: float  # Unix time it arrived


class FastReceiver:
    """A loopback endpoint that answers 200 at once and keeps what it received."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _hook(self, request: web.Request) -> web.Response:
        self.receipts.append(Receipt(await request.read(), dict(request.headers), time.time()))
        return web.Response(text="ok")

    async def __aenter__(self) -> FastReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class HangingReceiver:
    """A loopback endpoint that accepts each connection, reads what comes, and never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.most_open = 0  # connections held at once, at most
        self.requests = 0  # request lines seen ("POST /hook")
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.add(writer)
        self.most_open = max(self.most_open, len(self._open))
        try:
            while chunk := await reader.read(65536):
                self.requests += chunk.count(b"POST /hook ")
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def __aenter__(self) -> HangingReceiver:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in list(self._open):
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


@dataclass
class Run:
    variant: str
    round: int
    total_s: float  # first `batch created` -> last `batch completed`, from the server's log
    batch_ids: list[str]
    completed_at: dict[str, float]  # batch id -> Unix time of its `batch completed`
    cores: dict[str, float]
    attempts: dict[str, float] = field(default_factory=dict)  # /metrics, by outcome
    receipts: list[Receipt] = field(default_factory=list)
    hanging_connections: int = 0
    hanging_most_open: int = 0
    hanging_requests: int = 0


def _server(work: Path, name: str, upstream: str, url: str | None, secret: str) -> Overnight:
    server = Overnight(
        work,
        name,
        upstream,
        CONCURRENCY,
        env={SECRET_ENV: secret},
        webhook_timeout_s=TIMEOUT_S,
        webhook_retry_base_s=RETRY_BASE_S,
    )
    if url is not None:
        table = f'[[webhooks]]\nname = "bench"\nurl = "{url}"\nsecret_env = "{SECRET_ENV}"\n'
        server.config.write_text(server.config.read_text() + table)
    return server


async def _attempts(http: aiohttp.ClientSession, root: str) -> dict[str, float]:
    async with http.get(f"{root}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for outcome, value in _ATTEMPTS.findall(text):
        found[outcome] = found.get(outcome, 0.0) + float(value)
    return found


async def _workload(
    server: Overnight, paths: Sequence[Path], watch: dict[str, list[int]]
) -> tuple[list[str], CpuMeter, aiohttp.ClientSession]:
    """Upload the files (not timed), create every batch at once, wait until each has ended."""
    http = session()
    api = Api(http, server.base_url)
    files = [await api.upload(path) for path in paths]
    meter = CpuMeter({"overnight": [server.pid], **watch}, main_thread_of=("overnight",)).start()
    ids = [(await api.create(file["id"]))["id"] for file in files]
    for batch_id in ids:  # earliest deadline first: they end about in this order
        batch = await api.wait(batch_id, lambda b: False)
        if batch["status"] != "completed":
            raise RuntimeError(f"batch {batch_id} ended {batch['status']}: {batch.get('errors')}")
    meter.stop()
    return ids, meter, http


async def _run(
    work: Path, variant: str, round_: int, paths: Sequence[Path], upstream: FakeUpstream, secret: str
) -> Run:
    async with contextlib.AsyncExitStack() as stack:
        url = None
        fast: FastReceiver | None = None
        hanging: HangingReceiver | None = None
        if variant == "fast":
            fast = await stack.enter_async_context(FastReceiver())
            url = fast.url
        elif variant == "hanging":
            hanging = await stack.enter_async_context(HangingReceiver())
            url = hanging.url
        server = _server(work, f"webhooks-{variant}-{round_}", upstream.base_url, url, secret)
        stack.enter_context(server)
        ids, meter, http = await _workload(server, paths, {"fake upstream": upstream.pids})
        stack.push_async_callback(http.close)
        if fast is not None:
            deadline = time.monotonic() + DELIVERY_WAIT_S
            while len({r.headers.get("webhook-id") for r in fast.receipts}) < len(ids):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        log = server.log()
        events = [log_events(log, batch_id) for batch_id in ids]
        total_s = max(e["completed"] for e in events) - min(e["created"] for e in events)
        return Run(
            variant=variant,
            round=round_,
            total_s=total_s,
            batch_ids=ids,
            completed_at={batch_id: e["completed"] for batch_id, e in zip(ids, events, strict=True)},
            cores=meter.cores(),
            attempts=await _attempts(http, server.root),
            receipts=list(fast.receipts) if fast is not None else [],
            hanging_connections=hanging.connections if hanging is not None else 0,
            hanging_most_open=hanging.most_open if hanging is not None else 0,
            hanging_requests=hanging.requests if hanging is not None else 0,
        )
    raise AssertionError("unreachable")  # pragma: no cover  (the exit stack does not swallow errors)


@dataclass(frozen=True)
class Verified:
    received: int
    event_ids: int
    duplicates: int  # deliveries of an event id received before
    verified: int  # accepted by client.webhooks.unwrap
    batches_covered: int  # of the run's batches, those with a batch.completed event
    lag_ms: list[float]  # `batch completed` -> the first delivery of its event arrived


def verify(run: Run, secret: str) -> Verified:
    """Each delivery through the official SDK's check; count each event id once."""
    client = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    first: dict[str, Receipt] = {}
    verified = 0
    covered: set[str] = set()
    for receipt in run.receipts:
        try:
            event = client.webhooks.unwrap(receipt.body, receipt.headers, secret=secret)
        except openai.InvalidWebhookSignatureError:
            continue
        verified += 1
        first.setdefault(event.id, receipt)
        if event.type == "batch.completed" and event.data.id in run.completed_at:
            covered.add(event.data.id)
    lags = []
    for receipt in first.values():
        batch_id = re.search(rb'"data":\{"id":"([^"]+)"', receipt.body)
        if batch_id is not None and batch_id.group(1).decode() in run.completed_at:
            lags.append((receipt.at - run.completed_at[batch_id.group(1).decode()]) * 1000)
    return Verified(
        received=len(run.receipts),
        event_ids=len(first),
        duplicates=len(run.receipts) - len({r.headers.get("webhook-id") for r in run.receipts}),
        verified=verified,
        batches_covered=len(covered),
        lag_ms=sorted(lags),
    )


async def run(work: Path, lines: int) -> Section:
    paths = []
    for index in range(BATCHES):
        path = work / f"webhooks-{index}.jsonl"
        write_chat_file(path, lines)
        paths.append(path)
    secret = new_secret()
    order = [v for r in range(ROUNDS) for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1])]
    runs: list[Run] = []
    with FakeUpstream() as upstream:
        for index, variant in enumerate(order):
            runs.append(await _run(work, variant, index // len(VARIANTS), paths, upstream, secret))
    for path in paths:
        path.unlink()
    return _section(lines, runs, secret)


def _best(runs: Sequence[Run], variant: str) -> Run:
    return min((r for r in runs if r.variant == variant), key=lambda r: r.total_s)


def _section(lines: int, runs: list[Run], secret: str) -> Section:
    section = Section(
        "webhooks",
        f"webhooks: {BATCHES} batches x {lines:,} chat requests (instant fake upstream, max_concurrency "
        f"{CONCURRENCY}), no webhooks / a 200-at-once receiver / a receiver that never answers",
    )
    base = _best(runs, "none")
    times = {v: " / ".join(f"{r.total_s:.2f}" for r in runs if r.variant == v) for v in VARIANTS}
    section.add(f"no webhooks (baseline), best of {times['none']} s", ms(base.total_s * 1000))
    data: dict[str, Any] = {"batches": BATCHES, "lines": lines, "timeout_s": TIMEOUT_S}
    labels = {"fast": "receiver answers 200 at once", "hanging": "receiver never answers"}
    for variant, label in labels.items():
        best = _best(runs, variant)
        share = best.total_s / base.total_s
        section.add(f"{label}, best of {times[variant]} s", ms(best.total_s * 1000))
        section.add("  end to end / no webhooks", ratio(share), f"<= {GOAL}", share <= GOAL)
        data[f"ratio_{variant}"] = share
    checks = [verify(r, secret) for r in runs if r.variant == "fast"]
    expected = BATCHES * len(checks)
    received = sum(c.received for c in checks)
    event_ids = sum(c.event_ids for c in checks)
    duplicates = sum(c.duplicates for c in checks)
    verified = sum(c.verified for c in checks)
    covered = sum(c.batches_covered for c in checks)
    section.add(
        f"fast receiver, {len(checks)} runs: deliveries / event ids / duplicates",
        f"{received} / {event_ids} / {duplicates}",
        f"{expected} event ids, once each",
        event_ids == expected and duplicates == 0,
    )
    section.add(
        "  verified by client.webhooks.unwrap / batches covered",
        f"{verified} / {covered}",
        f"{received} / {expected}",
        verified == received and covered == expected,
    )
    lags = sorted(lag for c in checks for lag in c.lag_ms)
    if lags:
        median, worst = statistics.median(lags), max(lags)
        section.add("  batch completed -> delivered: median / max", f"{median:,.0f} / {worst:,.0f} ms")
    hanging = _best(runs, "hanging")
    attempts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(hanging.attempts.items())) or "none"
    section.add(
        "hanging receiver: attempts it saw / most held at once",
        f"{hanging.hanging_requests} / {hanging.hanging_most_open}",
    )
    section.add("  /metrics attempts by outcome", attempts)
    section.notes.append(
        f"hanging: webhook_timeout_s {TIMEOUT_S:g}, webhook_retry_base_s {RETRY_BASE_S:g} (all three ways "
        "run with these settings); each way ran on a fresh server, in ABC CBA ABC order"
    )
    for variant in VARIANTS:
        section.notes.append(f"cores used, best {variant} run: {cores(_best(runs, variant).cores)}")
    data["runs"] = [
        {
            "variant": r.variant,
            "round": r.round,
            "total_s": r.total_s,
            "cores": r.cores,
            "attempts": r.attempts,
            "received": len(r.receipts),
            "hanging_connections": r.hanging_connections,
            "hanging_most_open": r.hanging_most_open,
            "hanging_requests": r.hanging_requests,
        }
        for r in runs
    ]
    data["fast_checks"] = [vars(c) for c in checks]
    data["goal"] = GOAL
    section.data = data
    return section
