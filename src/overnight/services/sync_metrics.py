"""What /metrics shows of synchronous requests, by backend, endpoint and tier (docs/sync.md).

Their upstream attempts are also in the engine's own series (`overnight_upstream_requests_total`,
`overnight_upstream_latency_seconds`, `overnight_tokens_total`), beside the batch lines'; these say
what the clients saw.
"""

from __future__ import annotations

from collections.abc import Iterable

from overnight.domain.models import Usage
from overnight.engine.metrics import Counter, Histogram, gauge_lines


class SyncMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "overnight_sync_requests_total",
            "Synchronous requests answered, by backend, endpoint, tier (default/flex) and HTTP status sent.",
        )
        self.latency = Histogram(
            "overnight_sync_latency_seconds",
            "Synchronous requests from arrival to the end of the answer (a stream's last byte), by backend, "
            "endpoint and tier.",
        )
        self.waits = Histogram(
            "overnight_sync_wait_seconds",
            "Time a synchronous request waited for a slot on its backend, by backend and tier.",
        )
        self.first_chunks = Histogram(
            "overnight_sync_first_chunk_seconds",
            "Streamed synchronous requests from arrival to the answer's first bytes, by backend, endpoint "
            "and tier.",
        )
        self.waiting: dict[tuple[str, str], int] = {}  # (backend, tier) -> requests waiting for a slot now
        self.token_counts = Counter(
            "overnight_sync_tokens_total",
            "Tokens of synchronous requests, by backend, endpoint, tier and direction (input/output).",
        )

    def wait_began(self, backend: str, tier: str) -> None:
        self.waiting[backend, tier] = self.waiting.get((backend, tier), 0) + 1

    def waited(self, backend: str, tier: str, seconds: float) -> None:
        """A wait for a slot ended (with or without one)."""
        self.waiting[backend, tier] -= 1
        self.waits.observe(seconds, (("backend", backend), ("tier", tier)))

    def first_chunk(self, backend: str, endpoint: str, tier: str, seconds: float) -> None:
        self.first_chunks.observe(seconds, (("backend", backend), ("endpoint", endpoint), ("tier", tier)))

    def answered(
        self, backend: str, endpoint: str, tier: str, status: int, seconds: float, usage: Usage | None
    ) -> None:
        labels = (("backend", backend), ("endpoint", endpoint), ("tier", tier))
        self.requests.inc((*labels, ("status", str(status))))
        self.latency.observe(seconds, labels)
        if usage is not None:
            for direction, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
                if count:
                    self.token_counts.inc((*labels, ("direction", direction)), count)

    def render(self) -> Iterable[str]:
        for metric in (self.requests, self.latency, self.waits, self.first_chunks, self.token_counts):
            yield from metric.render()
        yield from gauge_lines(
            "overnight_sync_waiting",
            "Synchronous requests waiting for a slot on their backend now, by backend and tier.",
            sorted(((("backend", b), ("tier", t)), float(n)) for (b, t), n in self.waiting.items()),
        )
