"""The dashboard's values in words: durations, rates, money, progress bars, the chart and the alerts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.models import Batch, BatchStatus, ErrorGroup, RequestCounts
from overnight.domain.pricing import Cost
from overnight.domain.progress import Progress, Sample
from overnight.http import dashboard_views as views


def progress(total: int, completed: int, failed: int, **extra: object) -> Progress:
    fields: dict[str, object] = {
        "batch_id": "batch_1",
        "status": BatchStatus.IN_PROGRESS,
        "total": total,
        "completed": completed,
        "failed": failed,
        "rate_per_s": None,
        "eta_s": None,
        "window_left_s": 3600,
        "samples": (),
        **extra,
    }
    return Progress(**fields)  # type: ignore[arg-type]


def test_durations_read_at_a_glance() -> None:
    assert views.duration(None) == "unknown"
    assert views.duration(0) == "0 s"
    assert views.duration(42) == "42 s"
    assert views.duration(125) == "2 min 5 s"
    assert views.duration(3 * 3600 + 7 * 60 + 5) == "3 h 7 min"
    assert views.duration(2 * 86400 + 3 * 3600) == "2 d 3 h"
    assert views.duration(-5) == "0 s"


def test_rates_and_money() -> None:
    assert views.rate(None) == "unknown"
    assert views.rate(12.4) == "12 lines/s"
    assert views.rate(1.25) == "1.2 lines/s"
    assert views.rate(0.05) == "3.0 lines/min"
    assert views.usd(None) == "unknown"
    assert views.usd(0.01234) == "$0.0123"
    assert views.usd(1234.5) == "$1,234.50"
    assert views.usd(0.0) == "$0.0000"
    assert views.usd(0.0000123) == "$0.000012"  # a few tokens' worth is not shown as $0.0000
    assert views.usd(0.00009) == "$0.000090"


def test_an_eta_is_unknown_until_measured_and_done_at_the_end() -> None:
    assert views.eta(progress(10, 2, 0)) == "unknown"
    assert views.eta(progress(10, 2, 0, eta_s=90)) == "1 min 30 s"
    assert views.eta(progress(10, 9, 1, eta_s=0)) == "done"


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
def test_a_bar_never_overflows(total: int, completed: int, failed: int) -> None:
    drawn = views.bar(total, completed, failed)
    assert drawn.completed >= 0
    assert drawn.failed >= 0
    assert drawn.completed + drawn.failed <= 100.01


def test_a_chart_needs_two_samples_and_stays_in_its_box() -> None:
    assert views.chart([Sample(100, 0, 0)], 10) is None
    chart = views.chart([Sample(100, 0, 0), Sample(110, 5, 1), Sample(130, 10, 2)], 12)
    assert chart is not None
    assert chart.span == "30 s"
    assert chart.top == 12
    for line in (chart.completed, chart.failed):
        points = [tuple(map(float, point.split(","))) for point in line.split()]
        assert len(points) == 3
        assert points[0][0] == 0.0
        assert points[-1][0] == views.CHART_WIDTH
        assert all(0 <= y <= views.CHART_HEIGHT for _, y in points)


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 500), st.integers(0, 500)), min_size=2))
def test_any_samples_draw_inside_the_box(raw: list[tuple[int, int, int]]) -> None:
    samples = [Sample(at, completed, failed) for at, completed, failed in sorted(raw)]
    chart = views.chart(samples, total=100)
    assert chart is not None
    for line in (chart.completed, chart.failed):
        for point in line.split():
            x, y = map(float, point.split(","))
            assert 0 <= x <= views.CHART_WIDTH
            assert 0 <= y <= views.CHART_HEIGHT


def test_error_groups_come_largest_first_with_their_example_as_text() -> None:
    groups = views.error_groups(
        [
            ErrorGroup("timeout", None, 1, b'{"custom_id": "a"}\n'),
            ErrorGroup("fake_500", 500, 7, b'{"custom_id": "<b>x</b>", "bad": "\xff"}'),
        ]
    )
    shown = [(g.code, g.status, g.count) for g in groups]
    assert shown == [("fake_500", "500", 7), ("timeout", "no answer", 1)]
    assert groups[0].example == '{"custom_id": "<b>x</b>", "bad": "\ufffd"}'
    long = views.error_groups([ErrorGroup("x", 400, 1, b"a" * 5000)])[0].example
    assert len(long) < 2100
    assert long.endswith("…")


def test_every_line_failed_only_once_each_line_has_failed() -> None:
    assert views.every_line_failed(progress(3, 0, 3))
    assert not views.every_line_failed(progress(3, 0, 2))
    assert not views.every_line_failed(progress(3, 1, 2))
    assert not views.every_line_failed(progress(0, 0, 0))


def test_an_unpriced_model_says_so_and_never_shows_zero() -> None:
    unpriced = views.cost(Cost("llama-3", False, None, None))
    assert not unpriced.priced
    assert unpriced.missing == "No price configured for model llama-3."
    assert "$" not in unpriced.batch + unpriced.synchronous + unpriced.saved
    assert "No model known yet" in views.cost(Cost(None, False, None, None)).missing
    priced = views.cost(Cost("gpt-4o", True, 0.5, 1.0))
    assert (priced.batch, priced.synchronous, priced.saved) == ("$0.5000", "$1.0000", "$0.5000")


def test_a_row_of_an_ended_batch_shows_its_final_counts_and_no_eta() -> None:
    batch = Batch(
        id="batch_1",
        project="p",
        endpoint="/v1/chat/completions",
        input_file_id="file-1",
        completion_window="24h",
        status=BatchStatus.COMPLETED,
        created_at=0,
        expires_at=86400,
        request_counts=RequestCounts(4, 3, 1),
    )
    shown = views.row(batch, None)
    assert (shown.total, shown.completed, shown.failed, shown.status) == (4, 3, 1, "completed")
    assert (shown.rate, shown.eta, shown.window_left) == ("", "", "")
    assert shown.created == "1970-01-01 00:00:00 UTC"
    assert not shown.active
    running = views.row(
        batch, progress(4, 1, 0, rate_per_s=2.0, eta_s=2, window_left_s=60, status=BatchStatus.IN_PROGRESS)
    )
    assert (running.completed, running.rate) == (1, "2.0 lines/s")
    assert (running.eta, running.window_left) == ("2 s", "1 min 0 s")
    assert running.active
