"""`overnight submit`'s progress in words: counts that read right, and a rate that holds steady while
results arrive in groups."""

from __future__ import annotations

import io

from overnight.client.progress import ProgressView, Tally, _Rate
from overnight.client.words import plural, rate


def test_counts_read_right_in_the_singular_and_the_plural() -> None:
    assert plural(1, "part") == "1 part"
    assert plural(0, "batch", "batches") == "0 batches"
    assert plural(1, "batch", "batches") == "1 batch"
    assert plural(1_200, "line") == "1,200 lines"
    assert [rate(1), rate(1.04), rate(0.4), rate(2.5), rate(7_864.2)] == [
        "1 line/s",
        "1 line/s",
        "0.4 lines/s",
        "2.5 lines/s",
        "7,864 lines/s",
    ]


def test_the_rate_holds_steady_between_groups_of_results() -> None:
    """100 lines arrive every 5 s: between groups the rate stays at 20/s instead of sinking."""
    meter = _Rate()
    assert meter.add(0, now=0.0) is None
    seen = []
    for second in range(1, 61):
        done = 100 * (second // 5)
        seen.append(meter.add(done, now=float(second)))
    steady = [value for value in seen[5:] if value is not None]
    assert len(steady) == len(seen[5:])
    assert all(abs(value - 20.0) < 1e-9 for value in steady)


def test_the_rate_falls_only_after_a_long_pause() -> None:
    meter = _Rate()
    meter.add(0, now=0.0)
    assert meter.add(1_000, now=10.0) == 100.0
    assert meter.add(1_000, now=39.0) == 100.0  # 29 s with nothing new: still the rate measured
    falling = [meter.add(1_000, now=float(t)) or 0.0 for t in (45, 50, 55)]
    assert falling == sorted(falling, reverse=True)
    assert all(0 < value < 100.0 for value in falling)


def test_the_plain_line_names_one_batch_in_the_singular() -> None:
    tally = Tally(total=10, succeeded_collected=4, running=1)
    stream = io.StringIO()
    view = ProgressView(tally, stream, bar=False)
    view.refresh(force=True)
    assert "4/10 done (4 succeeded, 0 failed), rate unknown yet, 1 batch running" in stream.getvalue()
