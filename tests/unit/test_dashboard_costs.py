"""The costs page's figures: lines per day, model and source, each project's totals, the period asked
for, and a model without a price that says so (never $0)."""

from __future__ import annotations

import tomllib

from overnight.domain.models import Usage
from overnight.domain.pricing import BATCH, FLEX, SYNC, CostRow, Price, PriceTable
from overnight.http import dashboard_costs as costs
from overnight.http.auth import Identity
from overnight.http.dashboard import templates

PRICES = PriceTable([Price("fake-chat*", input=2.0, output=8.0, cached_input=1.0)])
DAY = 1_764_547_200  # 2025-12-01 00:00:00 UTC


def row(
    model: str | None,
    usage: Usage,
    *,
    day: str = "2025-12-01",
    project: str = "team-a",
    source: str = BATCH,
    batches: int = 1,
    requests: int = 0,
) -> CostRow:
    return CostRow(
        day=day,
        project=project,
        model=model,
        batches=batches if source == BATCH else 0,
        usage=usage,
        cost=PRICES.cost(model, usage),
        source=source,
        requests=requests,
    )


MILLION_IN = Usage(input_tokens=1_000_000, output_tokens=0)
MILLION_OUT = Usage(input_tokens=0, output_tokens=1_000_000)


def test_the_period_comes_from_the_query_string() -> None:
    assert costs.period_days(None) == costs.DEFAULT_DAYS == 30
    assert costs.period_days("") == 30
    assert costs.period_days("7") == 7
    for bad in ("0", "-1", "abc", "7.5", str(costs.MAX_DAYS + 1)):
        assert costs.period_days(bad) is None, bad
    assert costs.period_start(DAY + 5000, 1) == DAY
    assert costs.period_start(DAY + 5000, 30) == DAY - 29 * 86400


def test_a_priced_batch_shows_what_it_cost_and_saved() -> None:
    shown = costs.line(row("fake-chat", MILLION_IN, batches=2))
    assert (shown.model, shown.source, shown.count) == ("fake-chat", "batch", "2 batches")
    assert shown.input_tokens == "1,000,000"
    assert shown.money == costs.Money(True, charged="$1.0000", synchronous="$2.0000", saved="$1.0000")
    assert costs.line(row("fake-chat", MILLION_IN, batches=1)).count == "1 batch"


def test_synchronous_requests_cost_their_price_and_flex_the_batch_price() -> None:
    sync = costs.line(row("fake-chat", MILLION_OUT, source=SYNC, requests=3))
    assert (sync.source, sync.count) == ("synchronous", "3 requests")
    assert sync.money == costs.Money(True, charged="$8.0000", synchronous="$8.0000", saved="$0.0000")
    flex = costs.line(row("fake-chat", MILLION_OUT, source=FLEX, requests=1))
    assert (flex.source, flex.count) == ("flex", "1 request")
    assert flex.money == costs.Money(True, charged="$4.0000", synchronous="$8.0000", saved="$4.0000")


def test_a_model_without_a_price_says_so_and_never_shows_zero() -> None:
    shown = costs.line(row("gpt-4o-mini", MILLION_IN))
    assert shown.money.priced is False
    assert shown.money.unpriced == ("gpt-4o-mini",)
    assert "$" not in (shown.money.charged + shown.money.synchronous + shown.money.saved)
    nothing_ran = costs.line(row(None, Usage()))
    assert nothing_ran.model == costs.NO_MODEL
    assert nothing_ran.money.priced is False
    assert "named no model" in nothing_ran.money.note


def test_a_total_with_unpriced_tokens_names_them_and_what_the_rest_cost() -> None:
    mixed = costs.total_money([row("fake-chat", MILLION_IN), row("gpt-4o-mini", MILLION_IN)])
    assert mixed.priced is False
    assert mixed.unpriced == ("gpt-4o-mini",)
    assert mixed.priced_part == "$1.0000"
    assert mixed.charged == ""
    # an unpriced row without tokens (every request failed) and a batch without a model add nothing
    clean = costs.total_money([row("fake-chat", MILLION_IN), row("gpt-4o-mini", Usage()), row(None, Usage())])
    assert clean == costs.Money(True, charged="$1.0000", synchronous="$2.0000", saved="$1.0000")
    assert costs.total_money([row(None, Usage())]).note == "no priced usage"
    only_unpriced = costs.total_money([row("gpt-4o-mini", MILLION_IN)])
    assert (only_unpriced.unpriced, only_unpriced.priced_part) == (("gpt-4o-mini",), "")


def test_totals_add_up_every_source_per_project() -> None:
    rows = [
        row("fake-chat", MILLION_IN, day="2025-11-30", batches=2),
        row("fake-chat", MILLION_OUT, day="2025-11-30", source=SYNC, requests=4),
        row("fake-chat", MILLION_IN, day="2025-12-01", project="team-b"),
        row("gpt-4o-mini", Usage(10, 5, 2), day="2025-12-01", project="team-b"),
    ]
    page = costs.costs_page(rows)
    assert [line.day for line in page.lines] == ["2025-12-01", "2025-12-01", "2025-11-30", "2025-11-30"]
    assert [total.project for total in page.totals] == ["team-a", "team-b", "every project"]
    team_a, team_b, every = page.totals
    assert (team_a.batches, team_a.requests) == ("2", "4")
    assert team_a.money == costs.Money(True, charged="$9.0000", synchronous="$10.0000", saved="$1.0000")
    assert team_b.money.unpriced == ("gpt-4o-mini",)
    assert team_b.money.priced_part == "$1.0000"
    assert every.input_tokens == "2,000,010"
    assert every.cached_tokens == "2"
    assert page.unpriced == ("gpt-4o-mini",)
    assert len(costs.costs_page(rows[:2]).totals) == 1  # one project: no "every project" row
    assert costs.costs_page([]) == costs.CostsPage((), (), ())


def test_the_price_snippet_is_toml_to_fill_in() -> None:
    snippet = costs.price_snippet(["gpt-4o-mini", 'odd"name'])
    assert snippet.count("[[prices]]") == 2
    filled = snippet.replace("…", "1.0")
    parsed = tomllib.loads(filled)
    assert [entry["model"] for entry in parsed["prices"]] == ["gpt-4o-mini", 'odd"name']
    assert costs.price_snippet([costs.NO_MODEL]) == ""


def render(rows: list[CostRow], identity: Identity, **extra: object) -> str:
    page = costs.costs_page(rows)
    context = {
        "identity": identity,
        "open": False,
        "poll_ms": 2000,
        "page": page,
        "price_snippet": costs.price_snippet(page.unpriced),
        "days": 30,
        "periods": costs.PERIODS,
        "first_day": "2025-11-02",
        "last_day": "2025-12-01",
        "has_prices": True,
        "base_url": "http://overnight.example:8000/v1",
        **extra,
    }
    return templates().get_template("costs.html").render(context)


def test_the_page_shows_figures_unpriced_models_and_an_admins_projects() -> None:
    rows = [row("fake-chat", MILLION_IN), row("<b>gpt</b>", MILLION_IN, project="team-b")]
    html = render(rows, Identity("ops", admin=True))
    assert "$1.0000" in html
    assert "no price configured for" in html
    assert 'id="unpriced"' in html
    assert "<b>gpt</b>" not in html
    assert "&lt;b&gt;gpt&lt;/b&gt;" in html
    assert html.count('data-testid="project"') == 2
    assert 'href="/ui/costs"' in html
    own = render(rows[:1], Identity("team-a"))
    assert 'data-testid="project"' not in own
    assert 'id="unpriced"' not in own


def test_without_usage_the_page_says_what_to_do() -> None:
    html = render([], Identity("team-a"), has_prices=False)
    assert "No usage yet" in html
    assert "for project team-a" in html
    assert "http://overnight.example:8000/v1/chat/completions" in html
    assert "No prices are configured yet" in html
    assert 'id="totals"' not in html
