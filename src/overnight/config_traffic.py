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
