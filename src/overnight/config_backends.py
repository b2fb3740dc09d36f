"""The `[[backends]]` settings: one model server each, where batch lines and synchronous requests go
(docs/settings.md; traffic sharing in docs/background-traffic.md, ordering in docs/prefix-ordering.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from overnight import config_traffic as sharing
from overnight import config_values as plain
from overnight.backends.load import LOAD_KINDS
from overnight.config_traffic import DEFAULT_TARGET_QUEUE_DELAY_MS
from overnight.config_values import ConfigError


@dataclass(frozen=True, slots=True)
class BackendConfig:
    name: str
    base_url: str
    models: tuple[str, ...] = ("*",)
    api_key_env: str | None = None
    max_concurrency: int = 64
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    forward_service_tier: bool = False  # synchronous requests keep their `service_tier` (docs/sync.md)
    load_metrics_url: str | None = None  # the server's Prometheus /metrics (docs/load-signal.md)
    load_metrics_kind: str = "auto"  # which server's metric names: auto, vllm, sglang, llamacpp
    load_metrics_interval_s: float | None = None  # between reads (None: 0.25 s background, else 1 s)
    traffic: str = "dedicated"  # or "background": share the server (docs/background-traffic.md)
    target_queue_delay_ms: float = DEFAULT_TARGET_QUEUE_DELAY_MS  # background: queueing it may add
    priority: int | None = None  # vLLM's request `priority` sent with every batch line (None: not sent)
    occupancy_headroom: int = 0  # background with a load signal: its aim over the server's slots
    prefix_ordering: bool = False  # requests sharing a long prefix go together (docs/prefix-ordering.md)
    prefix_lookahead: int = 4096  # requests each running shard reads ahead to reorder
    prefix_lookahead_mb: int = 16  # and at most this many MB of them


def _load_metrics_kind(name: str, value: Any) -> str:
    if value is None:
        return "auto"
    if value not in LOAD_KINDS:
        raise ConfigError(f"setting '{name}': expected one of {', '.join(LOAD_KINDS)}, got {value!r}")
    return str(value)


def parse_backends(name: str, value: Any) -> tuple[BackendConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"setting '{name}': expected [[backends]] tables")
    backends: list[BackendConfig] = []
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"setting '{where}': expected a table")
        known = {f.name for f in dataclasses.fields(BackendConfig)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"setting '{where}.{unknown[0]}': unknown backend setting")
        backend = BackendConfig(
            name=plain.text(f"{where}.name", entry.get("name")),
            base_url=plain.url(f"{where}.base_url", entry.get("base_url")),
            models=plain.string_list(f"{where}.models", entry.get("models", ["*"])),
            api_key_env=plain.optional_text(f"{where}.api_key_env", entry.get("api_key_env")),
            max_concurrency=plain.positive_int(f"{where}.max_concurrency", entry.get("max_concurrency", 64)),
            requests_per_minute=plain.optional_positive_int(
                f"{where}.requests_per_minute", entry.get("requests_per_minute")
            ),
            tokens_per_minute=plain.optional_positive_int(
                f"{where}.tokens_per_minute", entry.get("tokens_per_minute")
            ),
            forward_service_tier=plain.boolean(
                f"{where}.forward_service_tier", entry.get("forward_service_tier", False)
            ),
            load_metrics_url=plain.optional_url(f"{where}.load_metrics_url", entry.get("load_metrics_url")),
            load_metrics_kind=_load_metrics_kind(
                f"{where}.load_metrics_kind", entry.get("load_metrics_kind")
            ),
            load_metrics_interval_s=sharing.load_metrics_interval_s(
                f"{where}.load_metrics_interval_s", entry.get("load_metrics_interval_s")
            ),
            traffic=sharing.traffic(f"{where}.traffic", entry.get("traffic")),
            target_queue_delay_ms=sharing.target_queue_delay_ms(
                f"{where}.target_queue_delay_ms", entry.get("target_queue_delay_ms")
            ),
            priority=sharing.priority(f"{where}.priority", entry.get("priority")),
            occupancy_headroom=sharing.occupancy_headroom(
                f"{where}.occupancy_headroom", entry.get("occupancy_headroom")
            ),
            prefix_ordering=plain.boolean(f"{where}.prefix_ordering", entry.get("prefix_ordering", False)),
            prefix_lookahead=plain.positive_int(
                f"{where}.prefix_lookahead", entry.get("prefix_lookahead", 4096)
            ),
            prefix_lookahead_mb=plain.positive_int(
                f"{where}.prefix_lookahead_mb", entry.get("prefix_lookahead_mb", 16)
            ),
        )
        if any(b.name == backend.name for b in backends):
            raise ConfigError(f"setting '{where}.name': backend name {backend.name!r} is used twice")
        backends.append(backend)
    return tuple(backends)
