"""Reads each backend's load signal every `load_metrics_interval_s`, in the background (docs/load-signal.md).

One small task per backend with a `load_metrics_url`, each with its own HTTP session and a short
timeout, so a slow or dead metrics endpoint never holds up the engine. A failed read clears that
backend's figures (stale load is worse than none) and is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from overnight.backends.load import LoadSample, parse_load
from overnight.engine.metrics import Labels, gauge_lines
from overnight.engine.neighbour import LoadReading

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
POLL_TIMEOUT_S = 2.0
LOG_EVERY_S = 60.0


def shown_url(url: str) -> str:
    """The URL as logs show it: without credentials or query (either may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True, slots=True)
class LoadSource:
    backend: str
    url: str
    kind: str = "auto"


class LoadPoller:
    """The latest load one backend's metrics endpoint showed; None while unknown."""

    def __init__(
        self,
        source: LoadSource,
        interval_s: float = POLL_INTERVAL_S,
        timeout_s: float = POLL_TIMEOUT_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.monotonic = monotonic
        self.latest: LoadSample | None = None
        self.reads = 0  # attempts made, for tests waiting on progress
        self.good_reads = 0  # reads that gave `latest`: tells one reading from the next
        self._last_logged: float | None = None

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self.read_once(session)
                await asyncio.sleep(self.interval_s)

    async def read_once(self, session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(self.source.url) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                text = await response.text(errors="replace")
            self.latest = parse_load(text, self.source.kind)
            self.good_reads += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means: load unknown
            self.latest = None
            self._log_failure(exc)
        finally:
            self.reads += 1

    def _log_failure(self, exc: Exception) -> None:
        now = self.monotonic()
        if self._last_logged is not None and now - self._last_logged < LOG_EVERY_S:
            return
        self._last_logged = now
        log.warning(
            "backend %r: cannot read its load from %s (%s: %s); reporting no load",
            self.source.backend,
            shown_url(self.source.url),
            type(exc).__name__,
            exc,
        )


class LoadSignals:
    """Every backend's poller, run together, and their figures as /metrics gauges."""

    def __init__(self, pollers: Sequence[LoadPoller]) -> None:
        self.pollers = list(pollers)

    def latest(self, backend: str) -> LoadSample | None:
        return next((p.latest for p in self.pollers if p.source.backend == backend), None)

    def reading(self, backend: str) -> LoadReading | None:
        """The server's waiting queue and running requests as last read, numbered (None: unknown, or it
        shows no queue); what a background backend's window follows (engine/neighbour.py)."""
        poller = next((p for p in self.pollers if p.source.backend == backend), None)
        if poller is None or poller.latest is None or poller.latest.waiting is None:
            return None
        return LoadReading(poller.latest.waiting, poller.good_reads, poller.latest.running)

    async def run(self) -> None:
        if self.pollers:
            await asyncio.gather(*(poller.run() for poller in self.pollers))

    def render(self) -> Iterable[str]:
        yield from self._gauge(
            "overnight_backend_load_waiting",
            "Requests waiting at the model server, from its load_metrics_url, by backend.",
            lambda s: s.waiting,
        )
        yield from self._gauge(
            "overnight_backend_load_running",
            "Requests running at the model server, from its load_metrics_url, by backend.",
            lambda s: s.running,
        )
        yield from self._gauge(
            "overnight_backend_load_kv_cache_usage",
            "Fraction (0..1) of the model server's KV cache in use, from its load_metrics_url, by backend.",
            lambda s: s.kv_cache_usage,
        )

    def _gauge(self, name: str, help_text: str, read: Callable[[LoadSample], float | None]) -> Iterable[str]:
        values: list[tuple[Labels, float]] = []
        for poller in sorted(self.pollers, key=lambda p: p.source.backend):
            value = read(poller.latest) if poller.latest is not None else None
            if value is not None:
                values.append(((("backend", poller.source.backend),), value))
        return gauge_lines(name, help_text, values)
