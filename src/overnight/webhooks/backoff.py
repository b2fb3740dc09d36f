"""When to try a webhook delivery again: a pure policy, with the clock and the randomness given."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

RETRY_CAP_S = 3600.0  # no wait between two attempts is longer than this


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Exponential backoff with jitter, for at least `retry_for_s` after the event.

    After the n-th failed attempt the next one waits `base_s * 2**(n-1)` (at most `cap_s`), times a
    random factor in [0.5, 1): receivers that come back are not hit by every sender at once. Once
    `retry_for_s` have passed since the event, a failed attempt is the last."""

    base_s: float = 5.0
    retry_for_s: float = 86400.0
    cap_s: float = RETRY_CAP_S

    def delay(self, attempts: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `attempts` failed attempts (1 or more)."""
        full = min(self.cap_s, self.base_s * 2.0 ** min(max(attempts - 1, 0), 64))
        return full * (0.5 + 0.5 * draw())

    def next_attempt_at(
        self, attempts: int, created_at: int, now: float, draw: Callable[[], float] = random.random
    ) -> int | None:
        """The whole second of the next attempt after `attempts` failed ones; None: give up."""
        if now >= created_at + self.retry_for_s:
            return None
        return math.ceil(now + self.delay(attempts, draw))
