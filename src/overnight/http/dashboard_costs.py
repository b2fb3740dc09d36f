"""What the dashboard's costs page shows, worked out from the CostRows of `CostsService.costs`: a line per
day, project, model and source (batches, synchronous and flex requests), and each project's totals over
the period, in words. A model without a price says so, and what to add to the `prices` settings; it never
shows $0. No web framework here, so the rules are tested without a server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from overnight.domain.models import Usage
from overnight.domain.pricing import BATCH, FLEX, SYNC, CostRow
from overnight.http.dashboard_views import usd
from overnight.services.costs import DAY_S

PERIODS = (1, 7, 30, 90)  # the selector's choices, in days
DEFAULT_DAYS = 30
MAX_DAYS = 366
SOURCE_NAMES = {BATCH: "batch", SYNC: "synchronous", FLEX: "flex"}
NO_MODEL = "(no model)"


def period_days(raw: str | None) -> int | None:
    """The period the query string asks for (`?days=7`): DEFAULT_DAYS without one; None when it is not a
    whole number of days from 1 to MAX_DAYS."""
    if raw is None or raw == "":
        return DEFAULT_DAYS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_DAYS:
        return None
    return int(raw)


def period_start(now: int, days: int) -> int:
    """The first second of a period of `days` UTC days that ends with today."""
    return (now // DAY_S - (days - 1)) * DAY_S


def count(value: int) -> str:
    return f"{value:,}"


def _model_name(model: str | None) -> str:
    return NO_MODEL if model is None else model


def _uses_tokens(usage: Usage) -> bool:
    return usage.input_tokens > 0 or usage.output_tokens > 0


@dataclass(frozen=True, slots=True)
class Money:
    """What some usage cost, in words. `priced` False: some of it has no price, and `unpriced` names the
    models (the amounts are then empty, never $0); `priced_part` is what the priced rest alone cost, for a
    total that holds both ("" otherwise). `note` says why there is no amount when no model is to blame."""

    priced: bool
    charged: str = ""
    synchronous: str = ""
    saved: str = ""
    unpriced: tuple[str, ...] = ()
    priced_part: str = ""
    note: str = ""


def row_money(row: CostRow) -> Money:
    """One row's cost: charged as its source is (batches and flex at batch prices, synchronous requests at
    synchronous ones), what the same requests cost synchronously, and the difference."""
    cost = row.cost
    if row.model is None:
        return Money(False, note="these batches named no model: nothing ran, nothing to price")
    if not cost.priced:
        return Money(False, unpriced=(row.model,))
    return Money(
        True,
        charged=usd(cost.charged_usd(row.source)),
        synchronous=usd(cost.synchronous_usd),
        saved=usd(cost.saved_by(row.source)),
    )


def total_money(rows: Sequence[CostRow]) -> Money:
    """The rows' costs added up. Not a number when a row that used tokens has no price (the sum would leave
    those tokens out): it names those models instead, and what the priced rows alone cost. Rows without
    tokens and without a price add nothing."""
    priced = [row for row in rows if row.cost.priced]
    unpriced = tuple(
        dict.fromkeys(
            _model_name(row.model) for row in rows if not row.cost.priced and _uses_tokens(row.usage)
        )
    )
    charged = sum(row.cost.charged_usd(row.source) or 0.0 for row in priced)
    synchronous = sum(row.cost.synchronous_usd or 0.0 for row in priced)
    saved = sum(row.cost.saved_by(row.source) or 0.0 for row in priced)
    if unpriced:
        return Money(False, unpriced=unpriced, priced_part=usd(charged) if priced else "")
    if not priced:
        return Money(False, note="no priced usage")
    return Money(True, charged=usd(charged), synchronous=usd(synchronous), saved=usd(saved))


@dataclass(frozen=True, slots=True)
class CostLine:
    """One day's usage of one project's model from one source, as the table shows it."""

    day: str
    project: str
    model: str
    source: str
    count: str  # "3 batches", "12 requests"
    input_tokens: str
    cached_tokens: str
    output_tokens: str
    money: Money


@dataclass(frozen=True, slots=True)
class ProjectTotal:
    """A project's usage over the whole period (`project` "every project": all of them together)."""

    project: str
    batches: str
    requests: str
    input_tokens: str
    cached_tokens: str
    output_tokens: str
    money: Money


@dataclass(frozen=True, slots=True)
class CostsPage:
    lines: tuple[CostLine, ...]  # newest day first
    totals: tuple[ProjectTotal, ...]  # by project; with several, then every project together
    unpriced: tuple[str, ...]  # the models without a price, as met in the lines


def _plural(value: int, one: str, many: str) -> str:
    return f"{value:,} {one if value == 1 else many}"


def line(row: CostRow) -> CostLine:
    if row.source == BATCH:
        counted = _plural(row.batches, "batch", "batches")
    else:
        counted = _plural(row.requests, "request", "requests")
    return CostLine(
        day=row.day,
        project=row.project,
        model=_model_name(row.model),
        source=SOURCE_NAMES.get(row.source, row.source),
        count=counted,
        input_tokens=count(row.usage.input_tokens),
        cached_tokens=count(row.usage.cached_tokens),
        output_tokens=count(row.usage.output_tokens),
        money=row_money(row),
    )


def total(project: str, rows: Sequence[CostRow]) -> ProjectTotal:
    usage = sum((row.usage for row in rows), Usage())
    return ProjectTotal(
        project=project,
        batches=count(sum(row.batches for row in rows if row.source == BATCH)),
        requests=count(sum(row.requests for row in rows if row.source != BATCH)),
        input_tokens=count(usage.input_tokens),
        cached_tokens=count(usage.cached_tokens),
        output_tokens=count(usage.output_tokens),
        money=total_money(rows),
    )


def price_snippet(models: Sequence[str]) -> str:
    """The `[[prices]]` entries to add to the config file for models without a price, to fill in."""
    entries = [
        f"[[prices]]\nmodel = {json.dumps(model)}   # a glob (with * or ?) matches its variants too\n"
        "input = …    # USD per million input tokens\n"
        "output = …   # USD per million output tokens (cached_input, batch_discount: docs/costs.md)\n"
        for model in models
        if model != NO_MODEL
    ]
    return "\n".join(entries)


def costs_page(rows: Sequence[CostRow]) -> CostsPage:
    """The page for the rows of a period (as `CostsService.costs` orders them: oldest day first)."""
    lines = [line(row) for row in rows]
    lines.sort(key=lambda shown: shown.day, reverse=True)  # stable: within a day, the service's order
    by_project: dict[str, list[CostRow]] = {}
    for row in rows:
        by_project.setdefault(row.project, []).append(row)
    totals = [total(project, by_project[project]) for project in sorted(by_project)]
    if len(totals) > 1:
        totals.append(total("every project", rows))
    unpriced = tuple(dict.fromkeys(model for shown in lines for model in shown.money.unpriced))
    return CostsPage(tuple(lines), tuple(totals), unpriced)
