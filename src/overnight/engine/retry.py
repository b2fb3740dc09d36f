"""The one home of the rules for a failed upstream attempt: whether it is tried again and after how
long, whether it costs the request one of its attempts, and what it says about the backend.

Pure functions and values; no I/O and no clock of their own.

* **Tried again:** connection errors and timeouts (no answer), 408, 409, 429 and every 5xx, unless
  the upstream's `x-should-retry` says otherwise (the local models say `false` to every error).
* **Backoff** after charged attempt ``n`` (1-based): ``base * 2 ** (n - 1)``, capped at ``cap``,
  then *reduced* by up to 25 % jitter, as the official SDK does; so always within
  ``[0.75 * min(backoff, cap), min(backoff, cap)]``. A valid `retry-after-ms` / `retry-after`
  replaces the backoff (no jitter), still capped at ``cap``: a batch has hours, so a long
  `retry-after` means waiting ``cap`` and asking again, never giving up. ``0`` means at once.
* **Charged an attempt:** every attempt that got an HTTP answer, whatever its status and whatever
  the circuit breaker's state: a request the upstream refuses for good ends in the error file, with
  the upstream's status and body, once its attempts are spent. An attempt that got no answer
  (timeout, reset) is charged only while the backend does not look down; one that never reached the
  upstream (no connection could be made) says nothing about the request and is never charged.
  Requests that are not charged wait for the backend, until their batch's window ends.
* **The backend looks down** after failures with no answer, 502, 503 or 504 from several *different*
  requests in a row (engine/control.py's `CircuitBreaker` counts them): the same request failing
  the same way again points to the request, not the backend.
* **Overload** (the concurrency window halves): no answer, 408, 409, 429, 502, 503, 504. A 500 is a
  request that failed, not a sign of load.
* **Synchronous requests** (docs/sync.md) are tried again by Overnight only when the attempt never
  reached the upstream (no connection could be made, so nothing ran there) and no byte of an answer
  has gone to the client, at most SYNC_MAX_ATTEMPTS attempts in all, after the usual backoff. Every
  other failure goes back to the client as the upstream gave it, with its `retry-after` and
  `x-should-retry`: the client's own policy (the SDK retries 408/409/429/5xx) decides, and a request
  that may have run upstream is never run twice behind the client's back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from overnight.backends.base import Attempt

JITTER = 0.25
SYNC_MAX_ATTEMPTS = 3
_MAX_EXPONENT = 1000  # 2.0 ** 1000 is still a finite float; any cap is reached long before
_BACKEND_DOWN = frozenset({502, 503, 504})
_OVERLOAD = frozenset({408, 409, 429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rand: Callable[[], float]) -> float:
        """Seconds to wait after failed attempt number `attempt` (1 = the first) before the next."""
        return retry_delay(
            attempt, base=self.base_delay_s, cap=self.max_delay_s, retry_after=retry_after, rand=rand
        )


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one attempt means for the request and for the backend."""

    succeeded: bool
    retry: bool  # worth another attempt
    overload: bool  # the backend wants fewer requests in flight
    backend_down: bool  # a failure that points to the backend, if different requests share it


def is_retryable_status(status: int) -> bool:
    """Whether an attempt that ended with `status` is worth repeating (0: no HTTP answer)."""
    return status == 0 or status == 408 or status == 409 or status == 429 or 500 <= status <= 599


def judge(answer: Attempt) -> Judgement:
    if 200 <= answer.status < 300 and answer.answered:
        return Judgement(succeeded=True, retry=False, overload=False, backend_down=False)
    if answer.should_retry is not None:
        retry = answer.should_retry
    else:
        retry = not answer.answered or is_retryable_status(answer.status)
    down = not answer.answered or answer.status in _BACKEND_DOWN
    overload = not answer.answered or answer.status in _OVERLOAD
    return Judgement(succeeded=False, retry=retry, overload=overload, backend_down=down)


def retry_synchronous(answer: Attempt, attempt: int, *, answer_sent: bool) -> bool:
    """Whether Overnight itself tries a synchronous request again after failed attempt number
    `attempt` (1 = the first); `answer_sent`: part of an answer already went to the client."""
    return not answer_sent and not answer.reached and attempt < SYNC_MAX_ATTEMPTS


def is_charged(answer: Attempt, backend_looks_down: bool) -> bool:
    """Whether a failed attempt costs its request one of its `max_attempts` (see the module)."""
    if answer.answered:
        return True
    return answer.reached and not backend_looks_down


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
