"""Parsers of the `[[backends]]` settings for sharing a server (docs/background-traffic.md)."""

from __future__ import annotations

from typing import Any

from overnight import config_values as plain
from overnight.config_values import ConfigError

TRAFFIC_KINDS = ("dedicated", "background")
DEFAULT_TARGET_QUEUE_DELAY_MS = 20.0
PRIORITY_RANGE = (-(2**31), 2**31 - 1)  # what vLLM's `priority` (an int) takes


def traffic(name: str, value: Any) -> str:
    if value is None:
        return "dedicated"
    if value not in TRAFFIC_KINDS:
        raise ConfigError(f"setting '{name}': expected one of {', '.join(TRAFFIC_KINDS)}, got {value!r}")
    return str(value)


def target_queue_delay_ms(name: str, value: Any) -> float:
    if value is None:
        return DEFAULT_TARGET_QUEUE_DELAY_MS
    delay = plain.positive_float(name, value)
    if delay > 60_000:
        raise ConfigError(f"setting '{name}': {delay:g} ms is over a minute; expected milliseconds")
    return delay


def priority(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"setting '{name}': expected an integer (vLLM's request priority), got {value!r}")
    low, high = PRIORITY_RANGE
    if not low <= value <= high:
        raise ConfigError(f"setting '{name}': {value} is out of range")
    return value


LOAD_METRICS_INTERVAL_S = 1.0  # between reads of a server's load (docs/load-signal.md)
BACKGROUND_LOAD_METRICS_INTERVAL_S = 0.25  # a background backend's window follows each reading


def load_metrics_interval_s(name: str, value: Any) -> float | None:
    if value is None:
        return None
    seconds = plain.positive_float(name, value)
    if not 0.01 <= seconds <= 60:
        raise ConfigError(f"setting '{name}': expected seconds from 0.01 to 60, got {value!r}")
    return seconds


def read_interval_s(traffic_kind: str, configured: float | None) -> float:
    """How often a backend's load is read: as configured, else more often for a background backend."""
    if configured is not None:
        return configured
    return BACKGROUND_LOAD_METRICS_INTERVAL_S if traffic_kind == "background" else LOAD_METRICS_INTERVAL_S


def occupancy_headroom(name: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"setting '{name}': expected an integer (requests over the server's slots), got {value!r}"
        )
    if not -1024 <= value <= 1024:
        raise ConfigError(f"setting '{name}': expected -1024 to 1024, got {value}")
    return value
