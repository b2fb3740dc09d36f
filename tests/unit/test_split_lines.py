"""Splitting a byte stream into numbered lines, one at a time or a chunk's worth at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from overnight.domain.lines import split_line_groups, split_lines


async def stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def numbered(data: bytes) -> list[tuple[int, bytes]]:
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start another
    return list(enumerate(lines, 1))


pieces = st.binary(max_size=12) | st.sampled_from([b"\n", b"a\nb", b"\n\n", b"x\n"])


@settings(max_examples=200, deadline=None)
@given(st.lists(pieces, max_size=10))
async def test_every_line_once_in_order_with_its_number(chunks: list[bytes]) -> None:
    expected = numbered(b"".join(chunks))
    groups = [group async for group in split_line_groups(stream(chunks))]
    assert all(groups)  # no empty group
    assert [line for group in groups for line in group] == expected
    assert [line async for line in split_lines(stream(chunks))] == expected


async def test_examples() -> None:
    assert [g async for g in split_line_groups(stream([b"one\ntw", b"o\n\nfour"]))] == [
        [(1, b"one")],
        [(2, b"two"), (3, b"")],
        [(4, b"four")],
    ]
    assert [g async for g in split_line_groups(stream([]))] == []
