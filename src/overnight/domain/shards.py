"""Dividing a validated batch's input into shards: ranges of lines that workers claim one at a time.

Pure: the validator's reader hands every line's length to a `ShardPlanner`, which remembers only where
each shard starts (memory grows with the number of shards, not of lines). The plan of one input is
always the same, so planning again after a crash finds the shards already stored.
"""

from __future__ import annotations

from overnight.domain.models import Shard

LINES_PER_SHARD = 5_000
END_OF_FILE = 2**62  # `end_line` of the last shard: every line to the end of the input


class ShardPlanner:
    def __init__(self, batch_id: str, lines_per_shard: int = LINES_PER_SHARD) -> None:
        if lines_per_shard < 1:
            raise ValueError("a shard holds at least one line")
        self._batch_id = batch_id
        self._per_shard = lines_per_shard
        self._starts: list[tuple[int, int]] = [(1, 0)]  # (first line, its byte offset) of each shard
        self._offset = 0
        self._lines = 0

    def line(self, line_no: int, length: int) -> None:
        """Account for input line `line_no` (in order, from 1) of `length` bytes without its newline."""
        if line_no != self._lines + 1:
            raise ValueError(f"line {line_no} after line {self._lines}")
        if line_no > 1 and (line_no - 1) % self._per_shard == 0:
            self._starts.append((line_no, self._offset))
        self._lines = line_no
        self._offset += length + 1

    def shards(self) -> list[Shard]:
        count = len(self._starts)
        ends = [first for first, _offset in self._starts[1:]] + [END_OF_FILE]
        return [
            Shard(self._batch_id, number, first, end, offset, count)
            for number, ((first, offset), end) in enumerate(zip(self._starts, ends, strict=True))
        ]
