"""The costs endpoint's daily buckets (http/costs.py): walking the pages covers [start, end) once, in
UTC days."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from overnight.http.costs import DAY_S, buckets


@given(st.integers(0, 2**34), st.integers(1, 40 * DAY_S), st.integers(1, 180))
def test_pages_of_buckets_cover_the_range_once_in_utc_days(start: int, length: int, limit: int) -> None:
    end, begin, walked = start + length, start, []
    while True:
        page, next_start = buckets(begin, end, limit)
        assert 1 <= len(page) <= limit
        walked += page
        if next_start is None:
            break
        begin = next_start
    assert walked[0][0] == start
    assert walked[-1][1] == end
    for (_, stop), (following, _) in itertools.pairwise(walked):
        assert stop == following  # contiguous, no overlap
        assert stop % DAY_S == 0  # every cut between buckets is a UTC midnight
    for first, stop in walked:
        assert first < stop
        assert first // DAY_S == (stop - 1) // DAY_S  # within one UTC day
