"""GET /v1/organization/costs: OpenAI's Costs API over Overnight's batches, with extension fields.

The shape is OpenAI's (`page` of daily `bucket`s of `organization.costs.result`s); `line_item` is the
model. Each result adds `source` (batch, sync or flex: never mixed in one result), `synchronous_amount`,
`saved_amount`, `usage`, `batch_count`, `request_count`, `priced` and, when unpriced, `message`
(docs/costs.md). A key sees its own project only; an admin key every project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from overnight.domain.clock import Clock, SystemClock
from overnight.domain.errors import InvalidRequest
from overnight.domain.pricing import BATCH, CostGroup, CostRow, group_costs
from overnight.http.auth import identity_of
from overnight.http.wire import json_response, usage_json
from overnight.services.costs import CostsService, day_name

DAY_S = 86400
DEFAULT_BUCKETS, MAX_BUCKETS = 7, 180
GROUPS = ("project_id", "line_item")
NOT_TRACKED = ("api_key_id", "user_id", "api_source")  # OpenAI's, which Overnight does not record
PAGE_PREFIX = "page_"

COSTS: web.AppKey[CostsService] = web.AppKey("costs", CostsService)
CLOCK: web.AppKey[Clock] = web.AppKey("costs_clock")


@dataclass(frozen=True, slots=True)
class CostsQuery:
    start: int  # the first second of this page's first bucket
    end: int  # exclusive
    limit: int  # buckets per page
    by_project: bool
    by_model: bool
    project_ids: tuple[str, ...]  # empty: every project the key may see
    line_items: tuple[str, ...]  # empty: every model


def _list(request: web.Request, name: str) -> list[str]:
    """An array parameter as `name=a&name=b`, `name[]=a` (the SDK's form) or `name=a,b`."""
    values = request.query.getall(name, []) + request.query.getall(f"{name}[]", [])
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _integer(request: web.Request, name: str, *, required: bool = False) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        if required:
            raise InvalidRequest(
                f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
            )
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid '{name}': expected an integer (Unix seconds), but got '{raw}'.",
            param=name,
            code="invalid_type",
        ) from None
    if value < 0:
        raise InvalidRequest(
            f"Invalid '{name}': must be 0 or more, got {value}.", param=name, code="invalid_value"
        )
    return value


def _group_by(request: web.Request) -> set[str]:
    groups = set(_list(request, "group_by"))
    for group in sorted(groups):
        if group in NOT_TRACKED:
            raise InvalidRequest(
                f"Invalid 'group_by': Overnight does not record '{group}'; group by project_id and/or "
                "line_item.",
                param="group_by",
                code="invalid_value",
            )
        if group not in GROUPS:
            raise InvalidRequest(
                f"Invalid value: '{group}'. Supported values are: 'project_id', 'line_item'.",
                param="group_by",
                code="invalid_value",
            )
    return groups


def _page_start(request: web.Request, start: int, end: int) -> int:
    cursor = request.query.get("page")
    if cursor is None:
        return start
    number = cursor.removeprefix(PAGE_PREFIX)
    if not cursor.startswith(PAGE_PREFIX) or not number.isdigit() or not start < int(number) < end:
        raise InvalidRequest(
            f"Invalid 'page': '{cursor}' is not a `next_page` of this query.",
            param="page",
            code="invalid_value",
        )
    return int(number)


def parse_query(request: web.Request, now: int) -> CostsQuery:
    start = _integer(request, "start_time", required=True)
    assert start is not None
    end = _integer(request, "end_time")
    if end is None:
        end = max(start, now) // DAY_S * DAY_S + DAY_S  # to the end of today, UTC
    if end <= start:
        raise InvalidRequest(
            f"Invalid 'end_time': must be after 'start_time' ({start}), got {end}.",
            param="end_time",
            code="invalid_value",
        )
    width = request.query.get("bucket_width", "1d")
    if width != "1d":
        raise InvalidRequest(
            f"Invalid value: '{width}'. Supported values are: '1d'.",
            param="bucket_width",
            code="invalid_value",
        )
    if _list(request, "api_key_ids"):
        raise InvalidRequest(
            "Invalid 'api_key_ids': Overnight does not record costs per API key.",
            param="api_key_ids",
            code="invalid_value",
        )
    limit = _integer(request, "limit")
    limit = DEFAULT_BUCKETS if limit is None else limit
    if not 1 <= limit <= MAX_BUCKETS:
        raise InvalidRequest(
            f"Invalid 'limit': must be between 1 and {MAX_BUCKETS}, got {limit}.",
            param="limit",
            code="invalid_value",
        )
    groups = _group_by(request)
    return CostsQuery(
        start=_page_start(request, start, end),
        end=end,
        limit=limit,
        by_project="project_id" in groups,
        by_model="line_item" in groups,
        project_ids=tuple(_list(request, "project_ids")),
        line_items=tuple(_list(request, "line_items")),
    )


def buckets(start: int, end: int, limit: int) -> tuple[list[tuple[int, int]], int | None]:
    """Up to `limit` UTC days from `start` to `end`, each cut to [start, end); and where the next page
    starts (None: this is the last)."""
    found: list[tuple[int, int]] = []
    begin = start
    while begin < end and len(found) < limit:
        stop = min(begin // DAY_S * DAY_S + DAY_S, end)
        found.append((begin, stop))
        begin = stop
    return found, begin if begin < end else None


def _amount(value: float | None) -> dict[str, Any]:
    return {"value": value, "currency": "usd"}


def _unpriced_message(group: CostGroup) -> str:
    models = ", ".join("(no model)" if model is None else repr(model) for model in group.unpriced)
    if group.model is None and len(group.unpriced) == 1 and group.unpriced[0] is None:
        return "These batches named no model (they failed before running), so nothing here has a price."
    return (
        f"No price is configured for {models}: add a [[prices]] entry whose `model` matches (docs/costs.md). "
        "The amounts are null rather than leave those tokens out."
    )


def result_json(group: CostGroup, *, by_project: bool, by_model: bool) -> dict[str, Any]:
    usage, cost = group.usage, group.cost
    return {
        "object": "organization.costs.result",
        "amount": _amount(cost.charged_usd(group.source)),
        "line_item": group.model if by_model else None,
        "project_id": group.project if by_project else None,
        "api_key_id": None,
        "quantity": usage.total_tokens if by_model else None,
        "quantity_unit": "tokens" if by_model else None,
        # Overnight's extension: what the same requests would have cost synchronously, and the rest
        "synchronous_amount": _amount(cost.synchronous_usd),
        "saved_amount": _amount(cost.saved_by(group.source)),
        "priced": cost.priced,
        "message": None if cost.priced else _unpriced_message(group),
        "source": group.source,
        "batch_count": group.batches,
        "request_count": None if group.source == BATCH else group.requests,
        "usage": usage_json(usage),
    }


def _visible(rows: Sequence[CostRow], query: CostsQuery) -> list[CostRow]:
    return [
        row
        for row in rows
        if (not query.project_ids or row.project in query.project_ids)
        and (not query.line_items or row.model in query.line_items)
    ]


async def costs(request: web.Request) -> web.Response:
    query = parse_query(request, int(request.app[CLOCK].now()))
    identity = identity_of(request)
    days, next_start = buckets(query.start, query.end, query.limit)
    project = identity.scope
    rows = _visible(await request.app[COSTS].costs(project, query.start, days[-1][1]), query)
    by_day: dict[str, list[CostRow]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
    data = []
    for begin, stop in days:
        groups = group_costs(
            by_day.get(day_name(begin), []), by_project=query.by_project, by_model=query.by_model
        )
        results = [result_json(g, by_project=query.by_project, by_model=query.by_model) for g in groups]
        data.append({"object": "bucket", "start_time": begin, "end_time": stop, "results": results})
    return json_response(
        {
            "object": "page",
            "data": data,
            "has_more": next_start is not None,
            "next_page": None if next_start is None else f"{PAGE_PREFIX}{next_start}",
        }
    )


def add_routes(app: web.Application, service: CostsService, clock: Clock | None = None) -> None:
    app[COSTS] = service
    app[CLOCK] = clock if clock is not None else SystemClock()
    app.router.add_get("/v1/organization/costs", costs)
