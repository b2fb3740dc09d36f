"""How busy a model server is, read from its Prometheus `/metrics` text (docs/load-signal.md).

Pure: text in, a `LoadSample` out. Each server kind names its queue, its running requests and its KV-cache
fill differently; `parse_load` maps those names onto one shape. Anything missing or malformed gives None
fields, never an exception: a server that answers garbage is a server whose load we do not know.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

LOAD_KINDS = ("auto", "vllm", "sglang", "llamacpp")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True, slots=True)
class LoadSample:
    waiting: int | None = None  # requests queued at the server, not yet started
    running: int | None = None  # requests the server is working on now
    kv_cache_usage: float | None = None  # fraction 0..1 of the KV cache in use


@dataclass(frozen=True, slots=True)
class _Names:
    """The metric names one server kind uses; the first name found in a tuple wins."""

    waiting: tuple[str, ...]
    running: tuple[str, ...]
    kv_cache_usage: tuple[str, ...]

    def all(self) -> tuple[str, ...]:
        return (*self.waiting, *self.running, *self.kv_cache_usage)


FAMILIES: dict[str, _Names] = {
    "vllm": _Names(
        waiting=("vllm:num_requests_waiting",),
        running=("vllm:num_requests_running",),
        kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),  # new name, then old
    ),
    "sglang": _Names(
        waiting=("sglang:num_queue_reqs",),
        running=("sglang:num_running_reqs",),
        kv_cache_usage=("sglang:token_usage",),
    ),
    "llamacpp": _Names(
        waiting=("llamacpp:requests_deferred",),
        running=("llamacpp:requests_processing",),
        kv_cache_usage=("llamacpp:kv_cache_usage_ratio",),
    ),
}


def parse_samples(text: str) -> dict[str, list[float]]:
    """Every well-formed sample line's value by metric name (label sets flattened); bad lines skipped."""
    samples: dict[str, list[float]] = {}
    for line in text.splitlines():
        parsed = _sample(line.strip())
        if parsed is not None:
            samples.setdefault(parsed[0], []).append(parsed[1])
    return samples


def _sample(line: str) -> tuple[str, float] | None:
    if not line or line.startswith("#"):
        return None
    match = _NAME.match(line)
    if match is None:
        return None
    name, rest = match.group(), line[match.end() :]
    if rest.startswith("{"):
        end = _labels_end(rest)
        if end is None:
            return None
        rest = rest[end:]
    if not rest[:1].isspace():
        return None
    fields = rest.split()
    if not 1 <= len(fields) <= 2:  # the value, then an optional timestamp
        return None
    try:
        value = float(fields[0])  # float() reads NaN, +Inf, -Inf and 1e+06 as Prometheus writes them
        if len(fields) == 2:
            int(fields[1])
    except ValueError:
        return None
    return name, value


def _labels_end(text: str) -> int | None:
    """The index just past the `}` closing the label set at text[0], minding quoted values and escapes."""
    quoted = False
    index = 1
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1  # whatever is escaped is part of the value
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "}":
            return index + 1
        index += 1
    return None


def detect_kind(samples: dict[str, list[float]]) -> str | None:
    """The server kind whose load metrics appear in the samples, if any."""
    for kind, names in FAMILIES.items():
        if any(name in samples for name in names.all()):
            return kind
    return None


def parse_load(text: str, kind: str = "auto") -> LoadSample:
    """The load a server's /metrics text shows; counts are summed over label sets (several models or
    engines behind one server), the KV-cache fraction is the fullest one."""
    samples = parse_samples(text)
    family = detect_kind(samples) if kind == "auto" else kind
    names = FAMILIES.get(family or "")
    if names is None:
        return LoadSample()
    usage = _first(samples, names.kv_cache_usage)
    return LoadSample(
        waiting=_count(_first(samples, names.waiting)),
        running=_count(_first(samples, names.running)),
        kv_cache_usage=min(max(usage), 1.0) if usage and all(v >= 0.0 for v in usage) else None,
    )


def _first(samples: dict[str, list[float]], names: tuple[str, ...]) -> list[float] | None:
    for name in names:
        values = [v for v in samples.get(name, []) if math.isfinite(v)]
        if values:
            return values
    return None


def _count(values: list[float] | None) -> int | None:
    if not values or any(v < 0 for v in values):
        return None
    return round(sum(values))
