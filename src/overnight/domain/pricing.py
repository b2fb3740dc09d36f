"""Prices per model, and what a batch's tokens cost as a batch and would have cost synchronously (pure).

Usage follows OpenAI's semantics: `input_tokens` include the `cached_tokens` (billed at the cached-input
price), and `output_tokens` include the `reasoning_tokens` (billed as output).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from overnight.domain.models import Usage

PER_TOKENS = 1_000_000  # prices are USD per million tokens
# Where usage came from: batches, synchronous requests, and synchronous ones with service_tier "flex"
BATCH, SYNC, FLEX = "batch", "sync", "flex"
SOURCES = (BATCH, SYNC, FLEX)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens for the models matching `pattern` (a glob: `gpt-4o*`)."""

    pattern: str
    input: float
    output: float
    cached_input: float | None = None  # None: as `input`
    batch_discount: float = 0.5  # the batch price is (1 - discount) x the synchronous one...
    batch_input: float | None = None  # ...unless these say the batch prices outright
    batch_cached_input: float | None = None
    batch_output: float | None = None

    def synchronous_usd(self, usage: Usage) -> float:
        cached = self.input if self.cached_input is None else self.cached_input
        return _usd(usage, self.input, cached, self.output)

    def batch_usd(self, usage: Usage) -> float:
        keep = 1.0 - self.batch_discount
        cached = self.input if self.cached_input is None else self.cached_input
        return _usd(
            usage,
            keep * self.input if self.batch_input is None else self.batch_input,
            keep * cached if self.batch_cached_input is None else self.batch_cached_input,
            keep * self.output if self.batch_output is None else self.batch_output,
        )


def _usd(usage: Usage, input_price: float, cached_price: float, output_price: float) -> float:
    cached = min(max(usage.cached_tokens, 0), max(usage.input_tokens, 0))
    uncached = max(usage.input_tokens, 0) - cached
    output = max(usage.output_tokens, 0)
    return (uncached * input_price + cached * cached_price + output * output_price) / PER_TOKENS


@dataclass(frozen=True, slots=True)
class Cost:
    """What some usage of one model cost. `priced` False: no price matches the model; the amounts are
    None then, never 0."""

    model: str | None
    priced: bool
    batch_usd: float | None
    synchronous_usd: float | None

    @property
    def saved_usd(self) -> float | None:
        if self.batch_usd is None or self.synchronous_usd is None:
            return None
        return self.synchronous_usd - self.batch_usd

    def charged_usd(self, source: str) -> float | None:
        """What the usage is charged: synchronous requests at synchronous prices; batches and flex
        requests at batch prices (as OpenAI bills flex processing)."""
        return self.synchronous_usd if source == SYNC else self.batch_usd

    def saved_by(self, source: str) -> float | None:
        """What charging `source`'s way saved against synchronous prices (0 for synchronous usage)."""
        if source == SYNC:
            return None if self.synchronous_usd is None else 0.0
        return self.saved_usd


class PriceTable:
    """The configured prices, in order: the first whose glob matches a model is that model's price."""

    def __init__(self, prices: Iterable[Price] = ()) -> None:
        self.prices = tuple(prices)

    def price_for(self, model: str | None) -> Price | None:
        if model is None:
            return None
        return next((price for price in self.prices if fnmatchcase(model, price.pattern)), None)

    def cost(self, model: str | None, usage: Usage) -> Cost:
        price = self.price_for(model)
        if price is None:
            return Cost(model, priced=False, batch_usd=None, synchronous_usd=None)
        return Cost(
            model, priced=True, batch_usd=price.batch_usd(usage), synchronous_usd=price.synchronous_usd(usage)
        )


@dataclass(frozen=True, slots=True)
class CostRow:
    """Usage and cost of one project's batches of one model, created on one UTC day (`YYYY-MM-DD`); or,
    with `source` SYNC or FLEX, of its synchronous requests answered that day (`requests` of them)."""

    day: str
    project: str
    model: str | None
    batches: int
    usage: Usage
    cost: Cost
    source: str = BATCH
    requests: int = 0


@dataclass(frozen=True, slots=True)
class CostGroup:
    """CostRows of one day added up, per project and/or per model or across them (None: every project,
    or every model, together; with `by_model`, a `model` None is the batches that never named one).
    `unpriced` lists the models without a price whose usage the group holds."""

    day: str
    project: str | None
    model: str | None
    batches: int
    usage: Usage
    cost: Cost
    unpriced: tuple[str | None, ...]
    source: str = BATCH  # groups never mix sources
    requests: int = 0


def _has_tokens(usage: Usage) -> bool:
    return usage.input_tokens > 0 or usage.output_tokens > 0


def combined_cost(rows: Sequence[CostRow], model: str | None = None) -> Cost:
    """The rows' costs added up. Unpriced when a row that used tokens has no price (the sum would leave
    them out), or when no row has one; a row without tokens and without a price adds nothing."""
    counted = [row for row in rows if row.cost.priced or _has_tokens(row.usage)]
    if not counted or not all(row.cost.priced for row in counted):
        return Cost(model, priced=False, batch_usd=None, synchronous_usd=None)
    return Cost(
        model,
        priced=True,
        batch_usd=sum(row.cost.batch_usd or 0.0 for row in counted),
        synchronous_usd=sum(row.cost.synchronous_usd or 0.0 for row in counted),
    )


def group_costs(rows: Iterable[CostRow], *, by_project: bool, by_model: bool) -> list[CostGroup]:
    """The rows grouped by day and source, and by project and/or model when asked, in the order they
    first appear."""
    groups: dict[tuple[str, str | None, str | None, str], list[CostRow]] = {}
    for row in rows:
        key = (row.day, row.project if by_project else None, row.model if by_model else None, row.source)
        groups.setdefault(key, []).append(row)
    found = []
    for (day, project, model, source), members in groups.items():
        usage = sum((row.usage for row in members), Usage())
        unpriced = tuple(dict.fromkeys(row.model for row in members if not row.cost.priced))
        found.append(
            CostGroup(
                day=day,
                project=project,
                model=model,
                batches=sum(row.batches for row in members),
                usage=usage,
                cost=combined_cost(members, model),
                unpriced=unpriced,
                source=source,
                requests=sum(row.requests for row in members),
            )
        )
    return found
