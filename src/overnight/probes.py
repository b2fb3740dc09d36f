"""Named points in the code where tests may kill the process, to prove crash safety.

Production runs use `NO_PROBE`. With the `crash_at` setting (`point` or `point:N`) the process
kills itself with SIGKILL the N-th time it reaches that point: no cleanup, no flush, exactly like
`kill -9` at that moment.
"""

from __future__ import annotations

import os
import signal
from typing import Protocol

POINTS = (
    "upload.stored",  # a file's content is on disk, its record not yet written
    "validation.finished",  # the input was read through, the verdict not yet recorded
    "execution.flushed",  # one group of results was committed
    "finalization.written",  # output and error files written, the batch not yet completed
    "finalization.moved",  # the batch is completed, its scratch results not yet removed
    "ending.marked",  # not-run lines of a cancelled/expired batch recorded, files not yet written
    "webhook.recorded",  # a batch ended and its webhook event is recorded, not yet sent
    "webhook.claimed",  # a webhook delivery is leased for its attempt, not yet sent
)


class Probe(Protocol):
    def reached(self, point: str) -> None: ...


class _NoProbe:
    def reached(self, point: str) -> None:
        return None


NO_PROBE: Probe = _NoProbe()


class CrashAt:
    def __init__(self, spec: str) -> None:
        point, _, times = spec.partition(":")
        if point not in POINTS:
            raise ValueError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
        self.point = point
        self.times = int(times) if times else 1
        self._seen = 0

    def reached(self, point: str) -> None:
        if point != self.point:
            return
        self._seen += 1
        if self._seen >= self.times:
            os.kill(os.getpid(), signal.SIGKILL)


def probe_for(spec: str | None) -> Probe:
    return NO_PROBE if not spec else CrashAt(spec)
