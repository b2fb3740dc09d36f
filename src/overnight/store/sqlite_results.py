"""SQL for results (one row per finished input line), run on the SQLite store's database thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from overnight.domain.models import ResultKind, ResultRow
from overnight.store import sqlite_stats as stats
from overnight.store import sqlite_streaming as streaming
from overnight.store.base import LineRange
from overnight.store.rows import COUNTERS
from overnight.store.sqlite_tx import placeholders, transaction

_RESULT_INSERT = (
    "INSERT INTO results (batch_id, line_no, kind, line, input_tokens, output_tokens, cached_tokens,"
    " reasoning_tokens, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (batch_id, line_no) DO NOTHING"
)
_COUNTERS_ADD = (
    f"UPDATE batches SET {', '.join(f'{column} = {column} + ?' for column in COUNTERS)} WHERE id = ?"
)


def _result_params(batch_id: str, row: ResultRow, seq: int) -> tuple[object, ...]:
    usage = row.usage
    return (
        batch_id,
        row.line_no,
        row.kind.value,
        row.line,
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
        seq,
    )


def _add_counters(conn: sqlite3.Connection, batch_id: str, new_rows: Iterable[ResultRow]) -> None:
    completed = failed = input_tokens = output_tokens = cached_tokens = reasoning_tokens = 0
    for row in new_rows:
        completed += row.kind is ResultKind.SUCCEEDED
        failed += row.kind is ResultKind.FAILED
        usage = row.usage
        input_tokens += usage.input_tokens
        output_tokens += usage.output_tokens
        cached_tokens += usage.cached_tokens
        reasoning_tokens += usage.reasoning_tokens
    counters = (completed, failed, input_tokens, output_tokens, cached_tokens, reasoning_tokens)
    conn.execute(_COUNTERS_ADD, (*counters, batch_id))


def record_results(conn: sqlite3.Connection, batch_id: str, rows: Sequence[ResultRow]) -> int:
    """Insert the rows of lines without a result and count only those (in the batch's counters and
    its error groups).

    Usually every row is new: one executemany does it. When some line already had a result (a
    request re-run after a crash), that attempt is rolled back and the rows go one at a time.
    """
    with transaction(conn):
        base = streaming.take_seqs(conn, batch_id, len(rows))  # numbered in the order they come
        params = [_result_params(batch_id, row, base + n) for n, row in enumerate(rows, 1)]
        conn.execute("SAVEPOINT fast")
        before = conn.total_changes
        conn.executemany(_RESULT_INSERT, params)
        if conn.total_changes - before == len(rows):
            conn.execute("RELEASE fast")
            _add_counters(conn, batch_id, rows)
            stats.add_error_groups(conn, batch_id, rows)
            return len(rows)
        conn.execute("ROLLBACK TO fast")
        conn.execute("RELEASE fast")
        execute = conn.execute
        pairs = zip(rows, params, strict=True)
        new_rows = [row for row, values in pairs if execute(_RESULT_INSERT, values).rowcount == 1]
        if new_rows:
            _add_counters(conn, batch_id, new_rows)
            stats.add_error_groups(conn, batch_id, new_rows)
        return len(new_rows)


def finished_lines(conn: sqlite3.Connection, batch_id: str, lines: LineRange) -> set[int]:
    sql = "SELECT line_no FROM results WHERE batch_id = ? AND line_no >= ? AND line_no < ?"
    return {line_no for (line_no,) in conn.execute(sql, (batch_id, *lines))}


def lines_page(
    conn: sqlite3.Connection, batch_id: str, kinds: list[str], after_line: int, end_line: int, limit: int
) -> tuple[int, int, bytes]:
    """(rows read, last line number, their lines joined with a newline after each)."""
    sql = (
        f"SELECT line_no, line FROM results WHERE batch_id = ? AND line_no > ? AND line_no < ?"
        f" AND kind IN ({placeholders(len(kinds))}) ORDER BY line_no LIMIT ?"
    )
    rows = conn.execute(sql, (batch_id, after_line, end_line, *kinds, limit)).fetchall()
    if not rows:
        return 0, after_line, b""
    return len(rows), rows[-1][0], b"\n".join([line for _, line in rows]) + b"\n"


def delete_some_results(conn: sqlite3.Connection, batch_id: str, limit: int) -> int:
    cursor = conn.execute(
        "DELETE FROM results WHERE batch_id = ? AND line_no IN"
        " (SELECT line_no FROM results WHERE batch_id = ? ORDER BY line_no LIMIT ?)",
        (batch_id, batch_id, limit),
    )
    return cursor.rowcount
