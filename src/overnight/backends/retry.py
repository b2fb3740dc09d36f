"""The retry policy for upstream requests: pure functions, no I/O, no clock of their own.

Rules (close to the official SDK's, see spec section 7.5):

* Retried: connection errors and timeouts (status 0 here), 408, 409, 429 and every 5xx.
* Backoff after failed attempt ``n`` (1-based): ``base * 2 ** (n - 1)``, capped at ``cap``, then
  *reduced* by up to 25 % jitter (``delay * (1 - 0.25 * rand())``), as the SDK does. The result is
  therefore always in ``[0.75 * min(backoff, cap), min(backoff, cap)]`` and never above ``cap``.
* A valid ``retry-after-ms`` / ``retry-after`` from the upstream replaces the backoff (no jitter),
  still capped at ``cap``. Unlike the SDK we never give up because a retry-after is long: a batch
  has hours, so we wait ``cap`` and try again. ``0`` is valid and means "retry at once".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

JITTER = 0.25
_MAX_EXPONENT = 1000  # 2.0 ** 1000 is still a finite float; any cap is reached long before


def is_retryable_status(status: int) -> bool:
    """Whether an attempt that ended with `status` is worth repeating (0: no HTTP answer)."""
    return status == 0 or status == 408 or status == 409 or status == 429 or 500 <= status <= 599


def retry_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None,
    rand: Callable[[], float],
) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 = the first try) before the next.

    `rand` returns a float in [0, 1) (e.g. `random.random`); it is called only when jitter applies.
    """
    cap = max(cap, 0.0)
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        return min(retry_after, cap)
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    backoff = min(max(base, 0.0) * 2.0**exponent, cap)
    fraction = min(max(rand(), 0.0), 1.0)
    return backoff * (1.0 - JITTER * fraction)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """The delay in seconds the upstream asked for, or None when it asked for none we understand.

    `retry-after-ms` (milliseconds) wins over `retry-after` (seconds, or an HTTP date compared with
    `now`, Unix seconds). A date in the past means 0. Negative, NaN and infinite values are ignored.
    `headers` should be case-insensitive (aiohttp's are); with a plain dict use lower-case names.
    """
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" gives a naive datetime; HTTP dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value
