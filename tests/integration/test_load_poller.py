"""The load poller against a real HTTP server on loopback serving a recorded llama.cpp exposition.

llama-cpp-python's server (the real upstream the acceptance tests start) has no /metrics, so the poller
is tested here against the C++ llama-server's recorded text; tests/acceptance/test_load_signal_real.py
checks that a backend whose load_metrics_url 404s keeps working.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from overnight.engine.load_signals import LoadPoller, LoadSignals, LoadSource, shown_url

RECORDED = (Path(__file__).parent.parent / "data" / "load" / "llamacpp.txt").read_text()
TIMEOUT_S = 30.0


class MetricsEndpoint:
    """A /metrics that answers the recording, or an error status while `status` says so."""

    def __init__(self) -> None:
        self.status = 200
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.Response(status=self.status, text="nope")
        return web.Response(text=RECORDED, content_type="text/plain")


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[MetricsEndpoint, str]]:
    metrics = MetricsEndpoint()
    app = web.Application()
    app.router.add_get("/metrics", metrics.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield metrics, str(server.make_url("/metrics"))
    await server.close()


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


async def running(poller: LoadPoller, body: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(poller.run())
    try:
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_poller_reads_the_load_and_metrics_show_it(endpoint: tuple[MetricsEndpoint, str]) -> None:
    _, url = endpoint
    poller = LoadPoller(LoadSource("gpu", url, "auto"), interval_s=0.01)
    signals = LoadSignals([poller])

    async def check() -> None:
        await until(lambda: poller.latest is not None)
        text = "\n".join(signals.render())
        assert 'overnight_backend_load_waiting{backend="gpu"} 1' in text
        assert 'overnight_backend_load_running{backend="gpu"} 1' in text
        assert 'overnight_backend_load_kv_cache_usage{backend="gpu"} 0.261719' in text
        assert signals.latest("gpu") == poller.latest

    await running(poller, check)


async def test_failures_clear_the_gauges_and_log_once_a_minute(
    endpoint: tuple[MetricsEndpoint, str], caplog: pytest.LogCaptureFixture
) -> None:
    metrics, url = endpoint
    now = [0.0]
    poller = LoadPoller(LoadSource("gpu", url, "llamacpp"), interval_s=0.01, monotonic=lambda: now[0])
    signals = LoadSignals([poller])
    caplog.set_level(logging.WARNING, logger="overnight.engine.load_signals")

    async def check() -> None:
        await until(lambda: poller.latest is not None)
        metrics.status = 500
        await until(lambda: poller.latest is None)
        reads = poller.reads
        await until(lambda: poller.reads >= reads + 5)  # several failures within one minute
        assert not any(line.startswith("overnight_backend_load") for line in signals.render())
        assert len([r for r in caplog.records if "cannot read its load" in r.message]) == 1
        now[0] = 61.0
        reads = poller.reads
        await until(lambda: poller.reads >= reads + 2)
        assert len([r for r in caplog.records if "cannot read its load" in r.message]) == 2
        metrics.status = 200
        await until(lambda: poller.latest is not None)

    await running(poller, check)


async def test_an_unreachable_endpoint_reports_no_load() -> None:
    async with aiohttp.ClientSession() as session:
        poller = LoadPoller(LoadSource("gpu", "http://127.0.0.1:9/metrics"), timeout_s=0.5)
        await poller.read_once(session)
    assert poller.latest is None
    assert poller.reads == 1


async def test_no_pollers_run_returns_at_once() -> None:
    signals = LoadSignals([])
    await asyncio.wait_for(signals.run(), TIMEOUT_S)
    assert [line for line in signals.render() if not line.startswith("#")] == []


def test_logs_show_the_url_without_its_secrets() -> None:
    assert shown_url("http://user:pw@gpu-1:8000/metrics?token=abc") == "http://gpu-1:8000/metrics"
