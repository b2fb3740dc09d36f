"""The job's on-disk index (SQLite, standard library): every input line, the part it is in, and its latest
result. It joins result lines back to input lines by `custom_id` and writes them out in input order, so
nothing grows in memory with the size of the job, and every commit survives a crash or a reboot.

A line has at most one result (the primary key), the latest try's; a success is never replaced.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from overnight.client.outcomes import Outcome, read_outcome

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS lines (
    line_no INTEGER PRIMARY KEY,  -- 1-based, in the original input file
    custom_id TEXT NOT NULL,
    offset INTEGER NOT NULL,  -- where the line starts in the input file, and its length without newline
    length INTEGER NOT NULL,
    part TEXT NOT NULL  -- the part that runs it now (a retry moves it)
);
CREATE TABLE IF NOT EXISTS results (
    line_no INTEGER PRIMARY KEY,
    part TEXT NOT NULL,  -- the part whose batch gave this result
    ok INTEGER NOT NULL,
    retryable INTEGER NOT NULL,
    code TEXT,
    status INTEGER,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    line BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_part ON results (part);
"""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS lines_by_custom_id ON lines (custom_id)",
    "CREATE INDEX IF NOT EXISTS lines_by_part ON lines (part, line_no)",
)
_UPSERT: Final = """
INSERT INTO results (line_no, part, ok, retryable, code, status, input_tokens, output_tokens, line)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (line_no) DO UPDATE SET
    part = excluded.part, ok = excluded.ok, retryable = excluded.retryable, code = excluded.code,
    status = excluded.status, input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    line = excluded.line
WHERE results.ok = 0
"""


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    succeeded: int
    failed: int
    retryable: int  # of the failed


@dataclass(slots=True)
class Recorded:
    """What recording a group of result lines changed."""

    succeeded: int = 0  # lines that now succeed and did not before
    failed: int = 0  # lines that now fail and had no result before
    new_successes: list[bytes] | None = None  # their lines, when asked for
    ignored: int = 0  # lines that are no result of this part (unreadable, or another custom_id)


@dataclass(frozen=True, slots=True)
class Retry:
    line_no: int
    offset: int
    length: int
    part: str  # the part of its last try (a part the state file knows)


class LineIndex:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")  # a result the state file calls collected is on disk
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def begin(self) -> None:
        self._db.execute("BEGIN")

    def commit(self) -> None:
        self._db.execute("COMMIT")

    # -- the input ---------------------------------------------------------------------------------

    def add_lines(self, rows: Sequence[tuple[int, str, int, int, str]]) -> None:
        """(line_no, custom_id, offset, length, part) for input lines, in any number of calls."""
        self._db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?)", rows)

    def finish_loading(self) -> None:
        for statement in _INDEXES:  # one by one: executescript would commit first
            self._db.execute(statement)

    def duplicates(self, limit: int) -> list[tuple[int, str, int]]:
        """(line_no, custom_id, first line_no with it) for every line whose custom_id came before."""
        rows = self._db.execute(
            "SELECT l.line_no, l.custom_id, d.first FROM lines l JOIN "
            "(SELECT custom_id, MIN(line_no) AS first FROM lines GROUP BY custom_id HAVING COUNT(*) > 1) d "
            "ON d.custom_id = l.custom_id WHERE l.line_no > d.first ORDER BY l.line_no LIMIT ?",
            (limit,),
        )
        return [(int(a), str(b), int(c)) for a, b, c in rows]

    def assign(self, part: str, line_nos: Sequence[int]) -> None:
        """Move lines to `part` (a retry)."""
        self._db.executemany("UPDATE lines SET part = ? WHERE line_no = ?", [(part, n) for n in line_nos])

    def line_of_part(self, part: str, position: int) -> int | None:
        """The input line number of the `position`-th (1-based) line of `part`'s file."""
        row = self._db.execute(
            "SELECT line_no FROM lines WHERE part = ? ORDER BY line_no LIMIT 1 OFFSET ?", (part, position - 1)
        ).fetchone()
        return None if row is None else int(row[0])

    def unanswered(self, part: str) -> list[tuple[int, str]]:
        """(line_no, custom_id) of `part`'s lines that have no result from `part`."""
        rows = self._db.execute(
            "SELECT l.line_no, l.custom_id FROM lines l LEFT JOIN results r "
            "ON r.line_no = l.line_no AND r.part = l.part WHERE l.part = ? AND r.line_no IS NULL "
            "ORDER BY l.line_no",
            (part,),
        )
        return [(int(a), str(b)) for a, b in rows]

    # -- results -----------------------------------------------------------------------------------

    def record(self, part: str, lines: Sequence[bytes], *, keep_successes: bool = False) -> Recorded:
        """Record result lines of `part`'s batch (one transaction). Lines of other parts are ignored."""
        recorded = Recorded(new_successes=[] if keep_successes else None)
        outcomes: dict[str, tuple[Outcome, bytes]] = {}
        for line in lines:
            try:
                outcome = read_outcome(line)
            except ValueError:
                recorded.ignored += 1
                continue
            outcomes[outcome.custom_id] = (outcome, line)
        if not outcomes:
            return recorded
        by_custom_id = dict(
            self._db.execute(
                "SELECT custom_id, line_no FROM lines WHERE part = ? "
                "AND custom_id IN (SELECT value FROM json_each(?))",
                (part, json.dumps(list(outcomes))),
            ).fetchall()
        )
        recorded.ignored = len(lines) - len(by_custom_id)
        before = dict(
            self._db.execute(
                "SELECT line_no, ok FROM results WHERE line_no IN (SELECT value FROM json_each(?))",
                (json.dumps(list(by_custom_id.values())),),
            ).fetchall()
        )
        rows = []
        for custom_id, line_no in by_custom_id.items():
            outcome, line = outcomes[custom_id]
            prior = before.get(line_no)
            if prior == 1:
                continue  # a success stays
            rows.append(_row(line_no, part, outcome, line))
            if outcome.ok:
                recorded.succeeded += 1
                if prior == 0:
                    recorded.failed -= 1
                if recorded.new_successes is not None:
                    recorded.new_successes.append(line)
            elif prior is None:
                recorded.failed += 1
        self.begin()
        self._db.executemany(_UPSERT, rows)
        self.commit()
        return recorded

    def counts(self) -> Counts:
        total = self._db.execute("SELECT COUNT(*) FROM lines").fetchone()[0]
        ok, failed, retryable = self._db.execute(
            "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0), COALESCE(SUM((1 - ok) * retryable), 0) "
            "FROM results"
        ).fetchone()
        return Counts(int(total), int(ok), int(failed), int(retryable))

    def usage(self) -> tuple[int, int]:
        """(input tokens, output tokens) of the results kept: each line's latest try only."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM results"
        ).fetchone()
        return int(row[0]), int(row[1])

    def results_of(self, part: str) -> tuple[int, int]:
        """(succeeded, failed) of the results `part`'s batch gave."""
        row = self._db.execute(
            "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM results WHERE part = ?", (part,)
        ).fetchone()
        return int(row[0]), int(row[1])

    def failure_codes(self) -> list[tuple[str, int]]:
        """(code, lines) of the failures kept, the commonest first."""
        rows = self._db.execute(
            "SELECT COALESCE(code, 'unknown'), COUNT(*) FROM results WHERE ok = 0 "
            "GROUP BY 1 ORDER BY 2 DESC, 1"
        )
        return [(str(code), int(count)) for code, count in rows]

    def retryable(self) -> Iterator[Retry]:
        """The lines whose latest try failed in a way worth another, in input order."""
        rows = self._db.execute(
            "SELECT l.line_no, l.offset, l.length, r.part FROM results r "
            "JOIN lines l ON l.line_no = r.line_no WHERE r.ok = 0 AND r.retryable = 1 ORDER BY r.line_no"
        )
        for line_no, offset, length, part in rows:
            yield Retry(int(line_no), int(offset), int(length), str(part))

    def in_order(self) -> Iterator[tuple[str, bytes | None, bool]]:
        """(custom_id, result line or None, succeeded) for every input line, in input order."""
        rows = self._db.execute(
            "SELECT l.custom_id, r.line, r.ok FROM lines l LEFT JOIN results r ON r.line_no = l.line_no "
            "ORDER BY l.line_no"
        )
        for custom_id, line, ok in rows:
            yield str(custom_id), None if line is None else bytes(line), bool(ok)


def _row(line_no: int, part: str, outcome: Outcome, line: bytes) -> tuple[object, ...]:
    usage = outcome.usage
    return (
        line_no,
        part,
        int(outcome.ok),
        int(outcome.retryable),
        outcome.code,
        outcome.status,
        usage.input_tokens,
        usage.output_tokens,
        line,
    )
