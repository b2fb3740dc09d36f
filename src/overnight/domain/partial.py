"""Reading a batch's output and error files while it runs: Doubleword's convention, pure parts.

A client reads `GET /v1/files/{id}/content?skip=N` (or `offset=N`, optionally `limit=M`) and gets the
lines after the first N, with `X-Incomplete` (whether more may follow) and `X-Last-Line` (the offset
to ask for next). N counts lines of the file in one fixed order that only ever grows at its end: the
order the results were recorded in (`seq`) while the batch runs, and the finished file's own order,
which is that same order whenever anyone read the lines before the batch ended (docs/partial-results.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from overnight.domain.errors import InvalidRequest

PAGE_LINES = 500  # results read from the store at a time while a batch runs
RUNNING_BYTES = 8 * 1024 * 1024  # a reply while the batch runs stops adding lines past this many bytes


class ResultOrder(enum.StrEnum):
    """The order of a batch's result files, fixed once (the batch's `result_order`)."""

    RECORDED = "recorded"  # the order results were recorded in: a reader read them while it ran
    FILES = "files"  # whatever order the finished files have (joined from the shards' parts)


@dataclass(frozen=True, slots=True)
class LineWindow:
    """Which lines of a file a read asks for: those after the first `skip`, at most `limit` (None: all)."""

    skip: int = 0
    limit: int | None = None

    @property
    def whole(self) -> bool:
        return self.skip == 0 and self.limit is None


def _count(name: str, raw: str | None, *, low: int) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{name}': expected an integer, but got '{raw}'.", param=name, code="invalid_type"
        ) from None
    return max(value, low)  # as Doubleword's pagination does: clamped, never refused


def line_window(skip: str | None, offset: str | None, limit: str | None) -> LineWindow:
    """The window of a content read: `skip` (what Doubleword's server reads and `dw` sends) or `offset`
    (what autobatcher and older `dw` releases send), and `limit`; negative values count as 0 and 1."""
    first = _count("skip", skip, low=0)
    if first is None:
        first = _count("offset", offset, low=0)
    return LineWindow(first or 0, _count("limit", limit, low=1))
