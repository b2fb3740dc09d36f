"""The pure parts of the dashboard's statistics: the rolling attempt counter, backend views, error codes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.models import BackendStatus, ResultKind, ResultRow
from overnight.domain.progress import backend_views
from overnight.domain.results import UPSTREAM_ERROR, error_code_of, not_run_row, response_row
from overnight.engine.recent import RecentAttempts, is_failure
from overnight.store.stats import NO_ANSWER, error_deltas

# -- the rolling counter ---------------------------------------------------------------------------

events = st.lists(st.tuples(st.floats(0, 10), st.booleans()), max_size=200)


@given(events, st.integers(1, 90), st.floats(0, 100))
def test_recent_attempts_count_exactly_the_last_span(
    steps: list[tuple[float, bool]], span_s: int, extra: float
) -> None:
    """Whatever the timing, the totals are those of the attempts noted in the last `span_s` whole seconds."""
    counter = RecentAttempts(span_s)
    noted: list[tuple[float, bool]] = []
    now = 1_700_000_000.0
    for gap, failed in steps:
        now += gap
        counter.note(now, failed)
        noted.append((now, failed))
    for at in (now, now + extra):
        oldest = int(at) - span_s + 1
        inside = [failed for when, failed in noted if oldest <= int(when) <= int(at)]
        assert counter.totals(at) == (len(inside), sum(inside))


def test_recent_attempts_forget_after_a_minute() -> None:
    counter = RecentAttempts()
    counter.note(100.0, True)
    counter.note(100.5, False)
    counter.note(130.0, False)
    assert counter.totals(130.0) == (3, 1)
    assert counter.totals(159.9) == (3, 1)
    assert counter.totals(160.0) == (1, 0)
    assert counter.totals(190.0) == (0, 0)


def test_what_counts_as_a_failure() -> None:
    assert is_failure(500, True)
    assert is_failure(503, True)
    assert is_failure(429, True)
    assert is_failure(502, False)  # no answer came
    assert not is_failure(200, True)
    assert not is_failure(400, True)
    assert not is_failure(404, True)


# -- backend views ---------------------------------------------------------------------------------


def report(backend: str, worker: str, **fields: object) -> BackendStatus:
    values: dict[str, object] = {
        "reported_at": 100,
        "window": 4,
        "limit": 16,
        "in_flight": 2,
        "breaker": "closed",
        "attempts": 10,
        "failures": 1,
    }
    values.update(fields)
    return BackendStatus(backend, worker, **values)  # type: ignore[arg-type]


def test_backend_views_add_the_workers_up() -> None:
    views = backend_views(
        [
            report("gpu", "w1"),
            report(
                "gpu",
                "w2",
                window=8,
                in_flight=5,
                breaker="half_open",
                attempts=30,
                failures=3,
                reported_at=104,
            ),
            report("cpu", "w1", attempts=0, failures=0),
        ]
    )
    assert [view.backend for view in views] == ["cpu", "gpu"]
    cpu, gpu = views
    assert cpu.error_rate is None
    assert cpu.workers == 1
    assert (gpu.workers, gpu.window, gpu.limit, gpu.in_flight) == (2, 12, 16, 7)
    assert (gpu.breaker, gpu.attempts, gpu.failures, gpu.error_rate) == ("half_open", 40, 4, 0.1)
    assert gpu.reported_at == 104


def test_the_worst_breaker_shows() -> None:
    views = backend_views([report("gpu", "w1", breaker="open"), report("gpu", "w2", breaker="half_open")])
    assert views[0].breaker == "open"
    assert backend_views([]) == []


# -- error codes and groups ------------------------------------------------------------------------


def test_an_error_answer_names_its_code() -> None:
    assert (
        error_code_of(b'{"error":{"code":"rate_limit_exceeded","type":"requests"}}') == "rate_limit_exceeded"
    )
    assert error_code_of(b'{"error":{"code":null,"type":"server_error"}}') == "server_error"
    assert error_code_of(b'{"error":{"code":400,"type":"BadRequestError"}}') == "BadRequestError"  # vLLM
    assert error_code_of(b'{"error":"boom"}') == UPSTREAM_ERROR
    assert error_code_of(b'{"detail":"not found"}') == UPSTREAM_ERROR
    assert error_code_of(b"not json") == UPSTREAM_ERROR


def test_rows_say_why_they_failed() -> None:
    ok = response_row(1, "r1", "c1", 200, "req", b'{"usage":{"prompt_tokens":1}}')
    assert (ok.error_code, ok.upstream_status) == (None, None)
    refused = response_row(2, "r2", "c2", 429, "req", b'{"error":{"code":"rate_limit_exceeded"}}')
    assert (refused.kind, refused.error_code, refused.upstream_status) == (
        ResultKind.FAILED,
        "rate_limit_exceeded",
        429,
    )
    unanswered = response_row(
        3, "r3", "c3", 504, "req", b'{"error":{"code":"upstream_timeout"}}', answered=False
    )
    assert (unanswered.error_code, unanswered.upstream_status) == ("upstream_timeout", None)
    expired = not_run_row(4, "r4", "c4", "batch_expired")
    assert (expired.error_code, expired.upstream_status) == ("batch_expired", None)


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from([None, 500, 429]), st.booleans()))
)
def test_error_deltas_count_every_error_row_once(cases: list[tuple[str | None, int | None, bool]]) -> None:
    rows = [
        ResultRow(
            n,
            ResultKind.SUCCEEDED if ok else ResultKind.FAILED,
            b"%d" % n,
            error_code=code,
            upstream_status=status,
        )
        for n, (code, status, ok) in enumerate(cases, start=1)
    ]
    deltas = error_deltas(reversed(rows))
    assert sum(delta.count for delta in deltas) == sum(1 for row in rows if row.kind is ResultKind.FAILED)
    assert [(d.code, d.status) for d in deltas] == sorted({(d.code, d.status) for d in deltas})
    for delta in deltas:
        members = [
            row.line_no
            for row in rows
            if row.kind is ResultKind.FAILED
            and (row.error_code or "unknown") == delta.code
            and (row.upstream_status or NO_ANSWER) == delta.status
        ]
        assert delta.example_line == min(members)
        assert delta.example == b"%d" % min(members)
