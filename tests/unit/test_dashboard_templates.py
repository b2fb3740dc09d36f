"""The dashboard's templates rendered as the server renders them: the states a browser test cannot easily
provoke (an upstream down), and escaping."""

from __future__ import annotations

from typing import Any

from overnight.domain.progress import BackendView
from overnight.http import dashboard_views as views
from overnight.http.auth import Identity
from overnight.http.dashboard import templates


def backend(**changes: Any) -> BackendView:
    fields: dict[str, Any] = {
        "backend": "vllm",
        "workers": 1,
        "window": 8,
        "limit": 16,
        "in_flight": 3,
        "breaker": "closed",
        "attempts": 40,
        "failures": 0,
        "error_rate": 0.0,
        "reported_at": 0,
        **changes,
    }
    return BackendView(**fields)


def render_list(backends: list[BackendView], **extra: Any) -> str:
    rows = [views.backend_row(view) for view in backends]
    context = {
        "identity": Identity("team-a"),
        "open": False,
        "poll_ms": 2000,
        "rows": [],
        "after": None,
        "next_after": None,
        "backends": rows,
        "troubled": [row for row in rows if row.trouble],
        "base_url": "http://overnight.example:8000/v1",
        "live_url": "/ui/fragments/batches",
        **extra,
    }
    return templates().get_template("batches_live.html").render(context)


def test_a_backend_is_in_trouble_when_its_breaker_opens_or_most_requests_fail() -> None:
    assert views.trouble(backend()) == ""
    assert "breaker is open" in views.trouble(backend(breaker="open"))
    assert "half open" in views.trouble(backend(breaker="half_open"))
    assert (
        views.trouble(backend(attempts=40, failures=30, error_rate=0.75))
        == "30 of its last 40 requests failed"
    )
    assert views.trouble(backend(attempts=2, failures=2, error_rate=1.0)) == ""  # too few to tell
    assert views.backend_row(backend(attempts=0, error_rate=None)).error_rate == "no requests"


def test_an_upstream_down_says_so_and_what_to_check() -> None:
    html = render_list([backend(breaker="open"), backend(backend="ok-one")])
    assert html.count('data-testid="backend-alert"') == 1
    assert "Upstream vllm looks down:" in html
    assert "[[backends]]" in html
    assert 'class="trouble"' in html
    assert render_list([backend()]).count("backend-alert") == 0


def test_the_empty_state_shows_how_to_start_against_this_server() -> None:
    html = render_list([])
    assert "No batches yet" in html
    assert 'base_url="http://overnight.example:8000/v1"' in html
    assert "curl http://overnight.example:8000/v1/files" in html
    assert "$OVERNIGHT_API_KEY" in html
    assert "No backend has reported yet" in html
    assert 'api_key="local"' in render_list([], open=True)


def test_what_users_and_upstreams_named_is_escaped() -> None:
    html = render_list([backend(backend="<script>alert(1)</script>", breaker="open")])
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
