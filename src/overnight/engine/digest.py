"""A backend's failed attempts in the log as patterns, not one line each.

A pattern is (status, whether an answer came, what happens next to the request). The first failure
of a pattern is logged at once; later ones are counted and logged together once `every_s` has
passed since that pattern's last line, so every failure is counted in exactly one line. The
scheduler calls `flush` when `due_in` says so, so a burst that stops is still reported.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import msgspec

from overnight.backends.base import Attempt

log = logging.getLogger("overnight.engine")
EXAMPLE_CHARS = 200


class Fate(enum.Enum):
    """What happens to a request after a failed attempt."""

    RETRYING = "retrying"  # charged an attempt, another one comes after a backoff
    WAITING = "waiting for the backend"  # not charged: the backend looks down or was unreachable
    FAILED = "gave up"  # written to the error file


@dataclass
class _Pattern:
    logged_at: float
    pending: int = 0
    example: str = ""


class _ErrorProbe(msgspec.Struct):
    message: str | None = None


class _BodyProbe(msgspec.Struct):
    error: _ErrorProbe | str | None = None


_probe = msgspec.json.Decoder(_BodyProbe)


def example_of(body: bytes, limit: int = EXAMPLE_CHARS) -> str:
    """What an error body says, for a log line: the OpenAI error's message when it has one, else the
    text; cut at a word boundary, never in the middle of a JSON value."""
    text = ""
    try:
        error = _probe.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        error = None
    if isinstance(error, str):
        text = error
    elif error is not None and error.message:
        text = error.message
    if not text:
        text = body.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + " …"


def describe_failure(answer: Attempt) -> str:
    """One failed attempt in words: its status (or that no answer came) and what the body says."""
    what = f"HTTP {answer.status}" if answer.answered else "no answer"
    return f"{what}: {example_of(answer.body)}"


class ErrorDigest:
    def __init__(self, backend: str, every_s: float = 30.0) -> None:
        self._backend = backend
        self._every_s = every_s
        self._patterns: dict[tuple[int, bool, Fate], _Pattern] = {}

    def note(self, answer: Attempt, fate: Fate, now: float) -> None:
        key = (answer.status, answer.answered, fate)
        pattern = self._patterns.get(key)
        if pattern is None:
            self._patterns[key] = _Pattern(logged_at=now)
            self._log(key, 1, example_of(answer.body), None)
            return
        pattern.pending += 1
        pattern.example = pattern.example or example_of(answer.body)
        if now - pattern.logged_at >= self._every_s:
            self._emit(key, pattern, now)

    def due_in(self, now: float) -> float | None:
        """Seconds until some counted failures are due in the log (None: nothing is waiting)."""
        waits = [p.logged_at + self._every_s - now for p in self._patterns.values() if p.pending]
        return max(0.0, min(waits)) if waits else None

    def flush(self, now: float, *, everything: bool = False) -> None:
        """Log the patterns whose interval has passed (every pattern with counts, if `everything`)."""
        for key, pattern in list(self._patterns.items()):
            if pattern.pending and (everything or now - pattern.logged_at >= self._every_s):
                self._emit(key, pattern, now)

    def _emit(self, key: tuple[int, bool, Fate], pattern: _Pattern, now: float) -> None:
        self._log(key, pattern.pending, pattern.example, now - pattern.logged_at)
        pattern.logged_at, pattern.pending, pattern.example = now, 0, ""

    def _log(self, key: tuple[int, bool, Fate], count: int, example: str, seconds: float | None) -> None:
        status, answered, fate = key
        what = f"status={status}" if answered else f"no_answer status={status}"
        span = "" if seconds is None else f" in the last {seconds:.0f} s"
        log.warning(
            "upstream errors backend=%s %s count=%d%s (%s) example=%r",
            self._backend,
            what,
            count,
            span,
            fate.value,
            example,
        )
