"""Flow-control policies: the AIMD window, token buckets and the circuit breaker."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overnight.engine.control import AimdWindow, BreakerState, CircuitBreaker, TokenBucket


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so mypy does not keep a narrowed state across method calls


def test_window_starts_open_halves_on_overload_and_recovers() -> None:
    window = AimdWindow(maximum=64)
    assert window.limit == 64
    burst = [window.sent() for _ in range(64)]
    window.record(True, burst[0])
    assert window.limit == 32
    for sequence in burst[1:]:  # sent before the decrease: the same signal again
        window.record(True, sequence)
    assert window.limit == 32
    window.record(True, window.sent())
    assert window.limit == 16
    for _ in range(2000):
        window.record(False, window.sent())
    assert window.limit == 64


@given(st.integers(min_value=1, max_value=512), st.lists(st.booleans(), max_size=300))
def test_window_stays_within_bounds(maximum: int, outcomes: list[bool]) -> None:
    window = AimdWindow(maximum=maximum)
    for outcome in outcomes:
        window.record(outcome, window.sent())
        assert 1 <= window.limit <= maximum


@given(st.integers(min_value=2, max_value=512), st.integers(min_value=1, max_value=50))
def test_one_overfull_window_halves_once(maximum: int, refused: int) -> None:
    window = AimdWindow(maximum=maximum)
    in_flight = [window.sent() for _ in range(maximum)]
    for sequence in in_flight[:refused]:
        window.record(True, sequence)
    assert window.limit == max(1, maximum // 2)


@given(
    st.integers(min_value=1, max_value=100_000),
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=3), st.integers(min_value=1, max_value=50)), max_size=200
    ),
)
def test_bucket_never_over_budget_in_any_interval(per_minute: int, steps: list[tuple[float, int]]) -> None:
    """Taking only when wait_time says 0, the total in [t0, t1] is at most burst + rate * (t1 - t0)."""
    bucket = TokenBucket.per_minute(per_minute)
    now = 0.0
    taken: list[tuple[float, int]] = []
    for step, amount in steps:
        now += step
        amount = min(amount, int(bucket.burst)) or 1
        if bucket.wait_time(amount, now) == 0:
            bucket.take(amount, now)
            taken.append((now, amount))
    for i, (start, _) in enumerate(taken):
        total = 0
        for when, amount in taken[i:]:
            total += amount
            assert total <= bucket.burst + bucket.rate_per_s * (when - start) + 1e-6


def test_bucket_wait_time_and_debt() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=10.0)
    assert bucket.wait_time(10, now=0.0) == 0
    bucket.take(30, now=0.0)  # the real cost was higher than the estimate: a debt of 20
    assert bucket.wait_time(1, now=0.0) == 2.1
    assert bucket.wait_time(1, now=2.1) == 0
    bucket.give_back(100, now=2.1)
    assert bucket.level == 10.0


def test_breaker_opens_probes_and_closes() -> None:
    breaker = CircuitBreaker(threshold=3, open_s=1.0, max_open_s=4.0)
    for request in range(3):
        assert breaker.allows(0.0)
        breaker.record(down=True, now=0.0, request=request)
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allows(0.5)
    assert breaker.retry_in(0.5) == 0.5
    assert breaker.allows(1.0)  # half open: one probe
    breaker.sent()
    assert not breaker.allows(1.0)
    breaker.record(down=True, now=1.1, request=0)  # the probe failed: open twice as long
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allows(2.5)
    assert breaker.allows(3.1)
    breaker.sent()
    breaker.record(down=False, now=3.2)
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allows(3.2)


def test_breaker_ignores_isolated_failures() -> None:
    breaker = CircuitBreaker(threshold=3)
    for _ in range(10):
        breaker.record(down=True, now=0.0)
        breaker.record(down=True, now=0.0)
        breaker.record(down=False, now=0.0)
    assert state_of(breaker) is BreakerState.CLOSED


def test_one_request_failing_again_and_again_never_opens_the_breaker() -> None:
    breaker = CircuitBreaker(threshold=3)
    for _ in range(50):
        breaker.record(down=True, now=0.0, request=("batch", 7))
    assert state_of(breaker) is BreakerState.CLOSED
    breaker.record(down=True, now=0.0, request=("batch", 8))
    breaker.record(down=True, now=0.0, request=("other", 7))
    assert state_of(breaker) is BreakerState.OPEN  # three different requests in a row


@given(st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=10)), max_size=200))
def test_breaker_open_time_is_bounded(events: list[tuple[bool, float]]) -> None:
    breaker = CircuitBreaker(threshold=2, open_s=1.0, max_open_s=8.0)
    now = 0.0
    for healthy, step in events:
        now += step
        if breaker.allows(now):
            breaker.sent()
            breaker.record(not healthy, now)
        assert breaker.retry_in(now) <= 8.0
