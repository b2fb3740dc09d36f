"""One progress display for the whole job: a tqdm bar on a terminal (done, failed, rate, ETA), plain lines
every few seconds otherwise (a log, CI, a pipe).

The counts: a line is done once it has a result, collected or counted live by its running batch.
A retried line stays counted as failed until its new try succeeds, so the bar never goes backwards.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from tqdm import tqdm

from overnight.client import words

PLAIN_EVERY_S: Final = 10.0
_RATE_WINDOW_S: Final = 60.0
_STALL_S: Final = 30.0  # a pause this long starts to lower the rate


@dataclass(slots=True)
class _Live:
    completed: int
    failed: int
    retry: bool  # a part of a retry round: its lines are already counted as failed


@dataclass(slots=True)
class Tally:
    total: int
    succeeded_collected: int = 0
    failed_collected: int = 0
    live: dict[str, _Live] = field(default_factory=dict)
    running: int = 0  # batches not yet ended
    round: int = 0

    def set_live(self, part: str, completed: int, failed: int, *, retry: bool) -> None:
        self.live[part] = _Live(completed, failed, retry)

    def drop_live(self, part: str) -> None:
        self.live.pop(part, None)

    @property
    def succeeded(self) -> int:
        return self.succeeded_collected + sum(live.completed for live in self.live.values())

    @property
    def failed(self) -> int:
        live_failed = sum(live.failed for live in self.live.values() if not live.retry)
        live_rescued = sum(live.completed for live in self.live.values() if live.retry)
        return max(0, self.failed_collected + live_failed - live_rescued)

    @property
    def done(self) -> int:
        return min(self.total, self.succeeded + self.failed)


class _Rate:
    """Lines per second over about the last minute, measured up to the latest change of the count.

    Results arrive in groups (one per poll, one per flush on the server), so the count stands still between
    them. Measuring to the latest change keeps the rate steady across those pauses, where lines so far over
    time so far would sink until the next group; only a pause longer than `_STALL_S` lowers it, smoothly.
    """

    def __init__(self) -> None:
        self._changes: deque[tuple[float, int]] = deque()  # (when, count): the first sample, then changes

    def add(self, done: int, now: float | None = None) -> float | None:
        """Note the count; the rate, or None before there is one (under a second measured, no change)."""
        now = time.monotonic() if now is None else now
        if not self._changes or done != self._changes[-1][1]:
            self._changes.append((now, done))
        while len(self._changes) > 2 and now - self._changes[1][0] > _RATE_WINDOW_S:
            self._changes.popleft()
        first_at, first_done = self._changes[0]
        last_at, last_done = self._changes[-1]
        span = max(last_at - first_at, now - first_at - _STALL_S)
        if span < 1.0 or last_done == first_done:
            return None
        return max(0.0, (last_done - first_done) / span)


class _Bar(tqdm):  # type: ignore[type-arg]
    """tqdm with the rate (and so the ETA) from `_Rate`: the bar's count is set, not stepped, so tqdm's own
    estimate would be lines over the whole time, sinking while the count stands still."""

    measured_rate: float | None = None

    @property
    def format_dict(self) -> MutableMapping[str, Any]:
        values = super().format_dict
        if self.measured_rate is not None:
            values["rate"] = self.measured_rate
        return values


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _knows_size(stream: TextIO) -> bool:
    """False for a terminal that says it has no size (some pseudo-terminals do): tqdm would hide the bar."""
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns > 0 and size.lines > 0
    except (OSError, ValueError):
        return False


class ProgressView:
    def __init__(self, tally: Tally, stream: TextIO = sys.stderr, *, bar: bool | None = None) -> None:
        self._tally = tally
        self._stream = stream
        use_bar = stream.isatty() if bar is None else bar
        self._bar: _Bar | None = None
        if use_bar:
            sized = _knows_size(stream)
            self._bar = _Bar(
                total=tally.total,
                initial=tally.done,
                file=stream,
                unit=" lines",
                unit_scale=False,
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
            )
        self._rate = _Rate()
        self._last_plain = 0.0

    def note(self, text: str) -> None:
        """A line of its own, above the bar."""
        if self._bar is not None:
            self._bar.write(f"overnight submit: {text}", file=self._stream)
        else:
            print(f"overnight submit: {text}", file=self._stream, flush=True)

    def refresh(self, *, force: bool = False) -> None:
        tally = self._tally
        rate = self._rate.add(tally.done)
        postfix = f"failed {tally.failed:,}, batches running {tally.running}"
        if tally.round:
            postfix += f", retry round {tally.round}"
        if self._bar is not None:
            self._bar.n = tally.done
            self._bar.measured_rate = rate
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if not force and now - self._last_plain < PLAIN_EVERY_S:
            return
        self._last_plain = now
        if rate:
            eta = _duration((tally.total - tally.done) / rate) if tally.done < tally.total else "0s"
            speed = f"{words.rate(rate)}, ETA {eta}"
        else:
            speed = "rate unknown yet"
        self.note(
            f"{tally.done:,}/{tally.total:,} done ({tally.succeeded:,} succeeded, {tally.failed:,} failed), "
            f"{speed}, {words.plural(tally.running, 'batch', 'batches')} running"
            + (f", retry round {tally.round}" if tally.round else "")
        )

    def close(self, *, final: bool = True) -> None:
        if final:
            self.refresh(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
