"""Prices and costs (domain/pricing.py): the first matching glob wins, batch vs synchronous, unpriced is
never 0, and costs add up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overnight.domain.models import Usage
from overnight.domain.pricing import Cost, CostRow, Price, PriceTable, combined_cost, group_costs

MINI = Price("gpt-4o-mini*", input=0.15, output=0.60, cached_input=0.075)
GPT4O = Price("gpt-4o*", input=2.50, output=10.0, cached_input=1.25)
TABLE = PriceTable([MINI, GPT4O])

tokens = st.integers(0, 10**9)
prices = st.floats(0, 1000, allow_nan=False, allow_infinity=False)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    input_tokens = draw(tokens)
    cached = draw(st.integers(0, input_tokens))
    output = draw(tokens)
    return Usage(input_tokens, output, cached, draw(st.integers(0, output)))


@st.composite
def price_entries(draw: st.DrawFn) -> Price:
    return Price(
        "m*",
        input=draw(prices),
        output=draw(prices),
        cached_input=draw(st.none() | prices),
        batch_discount=draw(st.floats(0, 1)),
        batch_input=draw(st.none() | prices),
        batch_cached_input=draw(st.none() | prices),
        batch_output=draw(st.none() | prices),
    )


def test_the_first_matching_glob_wins() -> None:
    assert TABLE.price_for("gpt-4o-mini-2024-07-18") == MINI
    assert TABLE.price_for("gpt-4o-2024-08-06") == GPT4O
    assert PriceTable([GPT4O, MINI]).price_for("gpt-4o-mini") == GPT4O  # order is the rule
    assert TABLE.price_for("GPT-4O") is None  # globs match case for case
    assert TABLE.price_for("llama") is None
    assert TABLE.price_for(None) is None


def test_a_cost_in_openai_terms() -> None:
    # 1M input of which 400k cached, 100k output (of which reasoning is part), on gpt-4o-mini
    cost = TABLE.cost("gpt-4o-mini", Usage(1_000_000, 100_000, 400_000, 30_000))
    synchronous = 0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.60
    assert cost.priced
    assert cost.synchronous_usd == pytest.approx(synchronous)
    assert cost.batch_usd == pytest.approx(synchronous / 2)
    assert cost.saved_usd == pytest.approx(synchronous / 2)


def test_explicit_batch_prices_replace_the_discount_one_by_one() -> None:
    price = Price("x", input=1.0, output=4.0, cached_input=0.5, batch_input=0.8, batch_output=3.0)
    cost = PriceTable([price]).cost("x", Usage(2_000_000, 1_000_000, 1_000_000))
    assert cost.synchronous_usd == pytest.approx(1.0 + 0.5 + 4.0)
    assert cost.batch_usd == pytest.approx(0.8 + 0.5 * 0.5 + 3.0)  # cached: discounted, the others as given


def test_no_cached_price_means_cached_tokens_cost_as_input() -> None:
    price = Price("x", input=1.0, output=0.0)
    assert PriceTable([price]).cost("x", Usage(1_000_000, 0, 1_000_000)).synchronous_usd == pytest.approx(1.0)


@given(usages(), st.sampled_from(["llama-3", "", "gpt-4", None]))
def test_an_unpriced_model_has_no_amounts_never_zero(usage: Usage, model: str | None) -> None:
    cost = TABLE.cost(model, usage)
    assert cost == Cost(model, priced=False, batch_usd=None, synchronous_usd=None)
    assert cost.saved_usd is None


@given(price_entries(), usages())
def test_costs_are_never_negative_and_discounts_never_cost_more(price: Price, usage: Usage) -> None:
    cost = PriceTable([price]).cost("model", usage)
    assert cost.priced
    assert cost.batch_usd is not None
    assert cost.synchronous_usd is not None
    assert cost.batch_usd >= 0
    assert cost.synchronous_usd >= 0
    plain = Price("m*", price.input, price.output, price.cached_input, price.batch_discount)
    discounted = PriceTable([plain]).cost("model", usage)
    assert discounted.batch_usd is not None
    assert discounted.synchronous_usd is not None
    assert discounted.batch_usd == pytest.approx((1 - price.batch_discount) * discounted.synchronous_usd)


@given(price_entries(), usages(), usages())
def test_costs_add_up(price: Price, first: Usage, second: Usage) -> None:
    table = PriceTable([price])
    both, one, other = table.cost("m", first + second), table.cost("m", first), table.cost("m", second)
    assert both.batch_usd == pytest.approx((one.batch_usd or 0) + (other.batch_usd or 0), rel=1e-9, abs=1e-9)
    assert both.synchronous_usd == pytest.approx(
        (one.synchronous_usd or 0) + (other.synchronous_usd or 0), rel=1e-9, abs=1e-9
    )


def row(project: str, model: str | None, usage: Usage, day: str = "2024-11-01") -> CostRow:
    return CostRow(day, project, model, 1, usage, TABLE.cost(model, usage))


def test_a_total_with_an_unpriced_model_that_used_tokens_is_unpriced() -> None:
    priced, unpriced = row("a", "gpt-4o", Usage(1_000_000)), row("a", "llama", Usage(10))
    assert combined_cost([priced]).batch_usd == pytest.approx(1.25)
    assert not combined_cost([priced, unpriced]).priced
    nothing_ran = row("a", None, Usage())  # a batch that failed validation
    assert combined_cost([priced, nothing_ran]).batch_usd == pytest.approx(1.25)
    assert not combined_cost([nothing_ran]).priced  # on its own it still has no price: never 0


def test_grouping_by_project_model_or_neither() -> None:
    rows = [
        row("a", "gpt-4o", Usage(1_000_000)),
        row("a", "gpt-4o-mini", Usage(2_000_000)),
        row("b", "gpt-4o", Usage(1_000_000)),
        row("b", "llama", Usage(5)),
        row("a", "gpt-4o", Usage(1_000_000), day="2024-11-02"),
    ]
    [day_one, day_two] = group_costs(rows, by_project=False, by_model=False)
    assert (day_one.day, day_one.project, day_one.model, day_one.batches) == ("2024-11-01", None, None, 4)
    assert not day_one.cost.priced
    assert day_one.unpriced == ("llama",)
    assert day_two.cost.batch_usd == pytest.approx(1.25)
    by_project = group_costs(rows, by_project=True, by_model=False)
    assert [(g.day, g.project, g.cost.priced) for g in by_project] == [
        ("2024-11-01", "a", True),
        ("2024-11-01", "b", False),
        ("2024-11-02", "a", True),
    ]
    assert by_project[0].cost.batch_usd == pytest.approx(1.25 + 2 * 0.075)
    by_model = group_costs(rows, by_project=False, by_model=True)
    assert [(g.model, g.batches, g.usage.input_tokens) for g in by_model[:3]] == [
        ("gpt-4o", 2, 2_000_000),
        ("gpt-4o-mini", 1, 2_000_000),
        ("llama", 1, 5),
    ]
    assert by_model[0].cost.synchronous_usd == pytest.approx(5.0)
