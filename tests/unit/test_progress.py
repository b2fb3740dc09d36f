"""The progress estimate: a rate from recent samples, and an ETA that is honest at the start and the end."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.models import Batch, BatchStatus, RequestCounts
from overnight.domain.progress import (
    MIN_SPAN_S,
    STALL_S,
    Sample,
    estimate,
    sample_interval,
)

START = 1_700_000_000
S = BatchStatus


def a_batch(
    total: int,
    completed: int = 0,
    failed: int = 0,
    status: BatchStatus = S.IN_PROGRESS,
    window_s: int = 86400,
) -> Batch:
    return Batch(
        id="batch_progress",
        project="p",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status=status,
        created_at=START,
        expires_at=START + window_s,
        in_progress_at=START if status is not S.VALIDATING else None,
        request_counts=RequestCounts(total, completed, failed),
    )


@st.composite
def runs(draw: st.DrawFn) -> tuple[Batch, list[Sample], int]:
    """A batch in progress with monotone samples (oldest first) and a `now` at or after the last."""
    gaps = draw(st.lists(st.integers(0, 400), max_size=30))
    steps = draw(
        st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), min_size=len(gaps), max_size=len(gaps))
    )
    samples, at, completed, failed = [], START, 0, 0
    for gap, (more_completed, more_failed) in zip(gaps, steps, strict=True):
        at, completed, failed = at + gap, completed + more_completed, failed + more_failed
        samples.append(Sample(at, completed, failed))
    completed += draw(st.integers(0, 50))
    failed += draw(st.integers(0, 5))
    total = completed + failed + draw(st.integers(0, 2000))
    now = at + draw(st.integers(0, 600))
    return a_batch(total, completed, failed), samples, now


@given(runs())
def test_never_negative_and_never_zero_while_lines_remain(run: tuple[Batch, list[Sample], int]) -> None:
    batch, samples, now = run
    progress = estimate(batch, samples, now)
    counts = batch.request_counts
    remaining = counts.total - counts.completed - counts.failed
    assert progress.window_left_s >= 0
    if progress.rate_per_s is not None:
        assert progress.rate_per_s > 0
    if progress.eta_s is not None:
        assert progress.eta_s >= 0
        assert (progress.eta_s == 0) == (remaining == 0)
    if remaining == 0 and counts.total > 0:
        assert progress.eta_s == 0
    if remaining > 0 and progress.eta_s is not None:
        assert progress.rate_per_s is not None
        assert progress.eta_s * progress.rate_per_s >= remaining - 1e-6


@given(runs())
def test_unknown_without_two_samples_apart_with_progress(run: tuple[Batch, list[Sample], int]) -> None:
    batch, samples, now = run
    spread = samples[-1].at - samples[0].at if samples else 0
    moved = samples and samples[-1].completed + samples[-1].failed > samples[0].completed + samples[0].failed
    if len(samples) < 2 or spread < MIN_SPAN_S or not moved:
        assert estimate(batch, samples, now).rate_per_s is None


@given(st.integers(1, 10_000), st.integers(0, 10_000))
def test_unknown_at_the_start(total: int, elapsed: int) -> None:
    batch = a_batch(total, completed=min(total - 1, elapsed))
    assert estimate(batch, [], START + elapsed).eta_s is None
    assert estimate(batch, [Sample(START, 0, 0)], START + elapsed).rate_per_s is None


def test_known_once_two_samples_apart_show_progress() -> None:
    samples = [Sample(START, 0, 0), Sample(START + 10, 90, 10)]
    progress = estimate(a_batch(1000, 95, 10), samples, START + 10)
    assert progress.rate_per_s == 10.0
    assert progress.eta_s == 90  # 900 lines left at 10 per second


def test_the_counts_now_extend_the_last_sample() -> None:
    samples = [Sample(START, 0, 0), Sample(START + 10, 100, 0)]
    progress = estimate(a_batch(1000, 150), samples, START + 15)
    assert progress.rate_per_s == 10.0  # 150 lines in 15 s
    assert progress.eta_s == 85


def test_too_close_samples_say_nothing() -> None:
    samples = [Sample(START, 0, 0), Sample(START + MIN_SPAN_S - 1, 50, 0)]
    assert estimate(a_batch(1000, 50), samples, START + MIN_SPAN_S - 1).eta_s is None


def test_unknown_while_nothing_moves() -> None:
    samples = [Sample(START, 0, 0), Sample(START + 10, 100, 0), Sample(START + 20, 100, 0)]
    assert estimate(a_batch(1000, 100), samples, START + 25).eta_s is not None  # a short pause
    stalled = START + 10 + int(STALL_S) + 1
    assert estimate(a_batch(1000, 100), [*samples, Sample(stalled, 100, 0)], stalled).eta_s is None
    flat = [Sample(START + n * 5, 100, 0) for n in range(10)]
    assert estimate(a_batch(1000, 100), flat, START + 45).rate_per_s is None


def test_the_rate_follows_changes() -> None:
    """The first ten minutes ran at 100 lines/s, the last two at 10 lines/s: the rate is about 10."""
    samples = [Sample(START + t, 100 * t, 0) for t in range(0, 601, 5)]
    done = 60_000
    samples += [Sample(START + 600 + t, done + 10 * t, 0) for t in range(5, 121, 5)]
    now = START + 720
    progress = estimate(a_batch(100_000, done + 1200), samples, now)
    assert progress.rate_per_s is not None
    assert 9.0 <= progress.rate_per_s <= 12.0


def test_honest_near_the_end() -> None:
    samples = [Sample(START + t, 10 * t, 0) for t in range(0, 101, 5)]
    one_left = estimate(a_batch(1001, 1000), samples, START + 100)
    assert one_left.eta_s == 1  # never "0 s" while a line remains
    all_done = estimate(a_batch(1000, 990, 10), samples, START + 100)
    assert all_done.eta_s == 0


def test_ended_batches_have_nothing_left_to_wait_for() -> None:
    for status in (S.FINALIZING, S.COMPLETED, S.CANCELLED, S.EXPIRED, S.FAILED):
        progress = estimate(a_batch(100, 50, status=status), [Sample(START, 0, 0)], START + 10)
        assert (progress.eta_s, progress.rate_per_s) == (0, None)
    for status in (S.VALIDATING, S.CANCELLING):
        assert estimate(a_batch(100, 50, status=status), [], START + 10).eta_s is None


@given(st.integers(0, 200_000), st.integers(1, 100_000))
def test_window_left_is_floored_at_zero(elapsed: int, window_s: int) -> None:
    progress = estimate(a_batch(10, window_s=window_s), [], START + elapsed)
    assert progress.window_left_s == max(0, window_s - elapsed)


def test_an_ended_batch_has_no_window_left() -> None:
    for status in (S.COMPLETED, S.FAILED, S.EXPIRED, S.CANCELLED):
        ended = estimate(a_batch(10, 10, status=status), [], START + 60)
        assert ended.window_left_s == 0, status
    for status in (S.VALIDATING, S.IN_PROGRESS, S.FINALIZING, S.CANCELLING):
        assert estimate(a_batch(10, 5, status=status), [], START + 60).window_left_s == 86400 - 60, status


def test_samples_come_back_oldest_first() -> None:
    samples = [Sample(START + 10, 5, 0), Sample(START, 0, 0), Sample(START + 5, 2, 1)]
    assert [s.at for s in estimate(a_batch(10, 5), samples, START + 10).samples] == [
        START,
        START + 5,
        START + 10,
    ]


def test_a_day_long_batch_keeps_a_few_hundred_samples() -> None:
    at, count = 0.0, 0
    for count in itertools.count(1):  # noqa: B007 - the count is what is measured
        at += sample_interval(at)
        if at >= 86400:
            break
    assert 100 <= count <= 500
