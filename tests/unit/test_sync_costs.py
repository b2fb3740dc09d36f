"""Synchronous usage in the costs (domain/pricing.py): sync at synchronous prices, flex at batch prices,
and never mixed with batch usage in one group."""

from __future__ import annotations

import pytest

from overnight.domain.models import Usage
from overnight.domain.pricing import BATCH, FLEX, SYNC, CostRow, Price, PriceTable, group_costs

TABLE = PriceTable([Price("m*", input=2.0, output=8.0)])  # batch prices: half
MILLION = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


@pytest.mark.parametrize(
    ("source", "charged", "saved"), [(BATCH, 5.0, 5.0), (SYNC, 10.0, 0.0), (FLEX, 5.0, 5.0)]
)
def test_each_source_is_charged_its_way(source: str, charged: float, saved: float) -> None:
    cost = TABLE.cost("m1", MILLION)
    assert cost.charged_usd(source) == pytest.approx(charged)
    assert cost.saved_by(source) == pytest.approx(saved)


def test_an_unpriced_model_is_charged_nothing_known() -> None:
    cost = TABLE.cost("other", MILLION)
    assert cost.charged_usd(SYNC) is None
    assert cost.saved_by(SYNC) is None


def row(source: str, requests: int = 0, model: str = "m1") -> CostRow:
    return CostRow(
        "2024-11-01",
        "p",
        model,
        1 if source == BATCH else 0,
        MILLION,
        TABLE.cost(model, MILLION),
        source,
        requests,
    )


def test_sources_are_grouped_apart_even_across_models() -> None:
    rows = [row(BATCH), row(SYNC, 3), row(SYNC, 4, "m2"), row(FLEX, 2)]
    groups = group_costs(rows, by_project=False, by_model=False)
    assert [(g.source, g.batches, g.requests, g.usage.input_tokens) for g in groups] == [
        (BATCH, 1, 0, 1_000_000),
        (SYNC, 0, 7, 2_000_000),
        (FLEX, 0, 2, 1_000_000),
    ]
    assert groups[1].cost.charged_usd(SYNC) == pytest.approx(20.0)
