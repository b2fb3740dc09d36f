"""The pure retry policy: which statuses are retried, how long to wait, what retry-after means."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.backends.http import parse_retry_after
from overnight.engine.retry import JITTER, is_retryable_status, retry_delay

NOW = 1_700_000_000.0

attempts = st.integers(min_value=1, max_value=10_000)
seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@pytest.mark.parametrize("status", [0, 408, 409, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried(status: int) -> None:
    assert is_retryable_status(status)


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 401, 403, 404, 410, 413, 422, 600])
def test_other_statuses_are_final(status: int) -> None:
    assert not is_retryable_status(status)


def test_backoff_doubles_from_base_without_jitter() -> None:
    delays = [retry_delay(n, base=0.5, cap=100.0, retry_after=None, rand=lambda: 0.0) for n in (1, 2, 3, 4)]
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_jitter_takes_off_at_most_a_quarter() -> None:
    assert retry_delay(3, base=1.0, cap=100.0, retry_after=None, rand=lambda: 0.999999) == pytest.approx(
        4.0 * (1 - JITTER * 0.999999)
    )


def test_backoff_is_capped() -> None:
    assert retry_delay(50, base=0.5, cap=8.0, retry_after=None, rand=lambda: 0.0) == 8.0


def test_retry_after_overrides_backoff_and_is_capped() -> None:
    assert retry_delay(1, base=0.5, cap=30.0, retry_after=7.0, rand=lambda: 0.5) == 7.0
    assert retry_delay(1, base=0.5, cap=30.0, retry_after=0.0, rand=lambda: 0.5) == 0.0
    assert retry_delay(1, base=0.5, cap=30.0, retry_after=3600.0, rand=lambda: 0.5) == 30.0


@given(attempt=attempts, base=seconds, cap=seconds, r=unit)
def test_delay_is_within_zero_and_cap(attempt: int, base: float, cap: float, r: float) -> None:
    delay = retry_delay(attempt, base=base, cap=cap, retry_after=None, rand=lambda: r)
    assert 0.0 <= delay <= cap


@given(attempt=attempts, base=seconds, cap=seconds, r=unit)
def test_delay_is_within_jitter_band_of_capped_backoff(
    attempt: int, base: float, cap: float, r: float
) -> None:
    delay = retry_delay(attempt, base=base, cap=cap, retry_after=None, rand=lambda: r)
    ceiling = min(base * 2.0 ** min(attempt - 1, 1000), cap)
    assert ceiling * (1 - JITTER) <= delay * (1 + 1e-12)
    assert delay <= ceiling * (1 + 1e-12)


@given(attempt=attempts, base=seconds, cap=seconds)
def test_lower_bound_never_falls_with_attempts(attempt: int, base: float, cap: float) -> None:
    """The slowest delay of attempt n+1 is at least the fastest of attempt n (monotone bounds)."""

    def delay(n: int, r: float) -> float:
        return retry_delay(n, base=base, cap=cap, retry_after=None, rand=lambda: r)

    assert delay(attempt + 1, 0.0) >= delay(attempt, 0.0)
    assert delay(attempt + 1, 0.999999) >= delay(attempt, 0.999999)


@given(attempt=attempts, base=seconds, cap=seconds, after=seconds, r=unit)
def test_retry_after_is_respected_up_to_cap(
    attempt: int, base: float, cap: float, after: float, r: float
) -> None:
    delay = retry_delay(attempt, base=base, cap=cap, retry_after=after, rand=lambda: r)
    assert delay == min(after, cap)


@given(attempt=attempts, r=unit, bad=st.sampled_from([float("nan"), float("inf"), -1.0]))
def test_invalid_retry_after_falls_back_to_backoff(attempt: int, r: float, bad: float) -> None:
    expected = retry_delay(attempt, base=0.5, cap=30.0, retry_after=None, rand=lambda: r)
    assert retry_delay(attempt, base=0.5, cap=30.0, retry_after=bad, rand=lambda: r) == expected


# -- parse_retry_after ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "tomorrow"}, None),
        ({"retry-after": ""}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


def test_parse_retry_after_http_date() -> None:
    header = formatdate(NOW + 42, usegmt=True)
    assert parse_retry_after({"retry-after": header}, NOW) == pytest.approx(42.0)


def test_parse_retry_after_http_date_without_zone() -> None:
    header = formatdate(NOW + 10).replace("+0000", "-0000")
    assert parse_retry_after({"retry-after": header}, NOW) == pytest.approx(10.0)


def test_parse_retry_after_date_in_the_past_means_now() -> None:
    header = formatdate(NOW - 600, usegmt=True)
    assert parse_retry_after({"retry-after": header}, NOW) == 0.0


def test_parse_retry_after_is_case_insensitive_with_aiohttp_headers() -> None:
    from multidict import CIMultiDict

    assert parse_retry_after(CIMultiDict({"Retry-After": "2"}), NOW) == 2.0


@given(value=st.text(max_size=40), millis=st.none() | st.text(max_size=20))
def test_parse_retry_after_never_raises_and_is_never_negative(value: str, millis: str | None) -> None:
    headers = {"retry-after": value} if millis is None else {"retry-after": value, "retry-after-ms": millis}
    result = parse_retry_after(headers, NOW)
    assert result is None or result >= 0.0


@given(delay=st.integers(min_value=0, max_value=10**6))
def test_http_date_round_trips(delay: int) -> None:
    result = parse_retry_after({"retry-after": formatdate(NOW + delay, usegmt=True)}, NOW)
    assert result == pytest.approx(float(delay))
