"""Shard planning: every line in exactly one shard, and each shard's offset where its first line starts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.shards import END_OF_FILE, ShardPlanner


@given(
    lines=st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b), min_size=0, max_size=200),
    per_shard=st.integers(min_value=1, max_value=50),
)
def test_every_line_is_in_exactly_one_shard_read_from_its_offset(lines: list[bytes], per_shard: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    planner = ShardPlanner("batch_x", per_shard)
    for number, line in enumerate(lines, start=1):
        planner.line(number, len(line))
    shards = planner.shards()
    assert [shard.shard_no for shard in shards] == list(range(len(shards)))
    assert all(shard.count == len(shards) for shard in shards)
    assert shards[0].first_line == 1
    assert shards[-1].end_line == END_OF_FILE
    covered: list[int] = []
    for shard in shards:
        rest = data[shard.start_offset :].split(b"\n")
        wanted = min(shard.end_line, len(lines) + 1) - shard.first_line
        assert rest[:wanted] == lines[shard.first_line - 1 : shard.first_line - 1 + wanted]
        covered.extend(range(shard.first_line, shard.first_line + wanted))
    assert covered == list(range(1, len(lines) + 1))
    assert len(shards) == max(1, -(-len(lines) // per_shard))


def test_the_same_input_plans_the_same_shards() -> None:
    plans = []
    for _ in range(2):
        planner = ShardPlanner("batch_x", 2)
        for number in range(1, 6):
            planner.line(number, 10)
        plans.append(planner.shards())
    assert plans[0] == plans[1]
    assert [(s.first_line, s.end_line, s.start_offset) for s in plans[0]] == [
        (1, 3, 0),
        (3, 5, 22),
        (5, END_OF_FILE, 44),
    ]
