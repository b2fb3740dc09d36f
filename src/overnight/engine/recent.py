"""A rolling count of a backend's recent attempts and failures (what the dashboard's error rate shows).

Pure: the time comes in as an argument. One bucket per second in a ring, so noting an attempt costs a
few operations however busy the backend is, and the totals cover whole seconds of the last minute.
"""

from __future__ import annotations

SPAN_S = 60


class RecentAttempts:
    """Attempts, and how many of them failed, over the last `span_s` seconds (the current second
    included)."""

    def __init__(self, span_s: int = SPAN_S) -> None:
        if span_s < 1:
            raise ValueError(f"span_s must be at least 1, not {span_s}")
        self._span = span_s
        self._seconds = [-1] * span_s  # which second each bucket holds
        self._attempts = [0] * span_s
        self._failures = [0] * span_s

    def note(self, now: float, failed: bool) -> None:
        """Count one attempt answered (or given up on) at `now`."""
        second = int(now)
        slot = second % self._span
        if self._seconds[slot] != second:
            self._seconds[slot] = second
            self._attempts[slot] = self._failures[slot] = 0
        self._attempts[slot] += 1
        if failed:
            self._failures[slot] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """(attempts, failures) noted in the `span_s` seconds up to and including `now`'s."""
        second = int(now)
        oldest = second - self._span + 1
        attempts = failures = 0
        for slot, held in enumerate(self._seconds):
            if oldest <= held <= second:
                attempts += self._attempts[slot]
                failures += self._failures[slot]
        return attempts, failures


def is_failure(status: int, answered: bool) -> bool:
    """An attempt that counts against a backend's health: no answer, 429 or 5xx."""
    return not answered or status == 429 or status >= 500
