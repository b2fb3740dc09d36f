"""Usage, cost and budgets through the real server: GET /v1/organization/costs per project, day and model
(read with the official SDK's admin client), an unpriced model, admin and non-admin keys, and the
enqueued-token budget refusing a batch with `token_limit_exceeded` and releasing when batches end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai import OpenAI
from openai.types.batch_usage import BatchUsage

from acceptance.conftest import chat_line, error_shape, upload, wait_for, write_config
from support.server import FakeUpstreamProcess, OvernightServer

PRICED, UNPRICED = "fake-chat", "gpt-4o-mini"
INPUT_USD, OUTPUT_USD = 2.0, 8.0  # per million tokens, for fake-chat*
KEYS = {"key-team-a": "team-a", "key-team-b": "team-b"}
ADMIN = "key-admin"
BUDGET = 250  # team-b's enqueued tokens
TOKENS_100 = "x" * 400  # prompt text the estimate counts as 100 tokens


def config_text(upstream_url: str, path: Path) -> Path:
    write_config(path, upstream_url, api_keys=KEYS)
    extra = [
        "[[api_keys]]",
        f'key = "{ADMIN}"',
        'project = "ops"',
        "admin = true",
        "[[prices]]",
        'model = "fake-chat*"',
        f"input = {INPUT_USD}",
        f"output = {OUTPUT_USD}",
        "[token_budgets]",
        f'"team-b" = {BUDGET}',
    ]
    path.write_text(path.read_text() + "\n".join(extra) + "\n")
    return path


@pytest.fixture(scope="module")
def costs_server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("costs")
    server = OvernightServer(root / "data", config_text(upstream.base_url, root / "overnight.toml"))
    server.start()
    yield server
    server.stop()


def client_for(server: OvernightServer, key: str) -> OpenAI:
    """The SDK in strict mode, whose admin client (`client.admin...`) sends the same key."""
    return OpenAI(
        base_url=server.base_url,
        api_key=key,
        admin_api_key=key,
        _strict_response_validation=True,
        max_retries=0,
    )


def run(client: OpenAI, lines: list[dict[str, Any]]) -> Any:
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return wait_for(client, batch.id)


def results_of(page: Any) -> list[Any]:
    return [result for bucket in page.data for result in bucket.results]


def expected_usd(usage: BatchUsage) -> float:
    return (usage.input_tokens * INPUT_USD + usage.output_tokens * OUTPUT_USD) / 1_000_000


def test_costs_per_project_day_and_model(costs_server: OvernightServer) -> None:
    start = int(time.time()) - 5
    team_a, team_b = client_for(costs_server, "key-team-a"), client_for(costs_server, "key-team-b")
    priced = run(team_a, [chat_line(f"p{i}", PRICED) for i in range(3)])
    unpriced = run(team_a, [chat_line(f"u{i}", UNPRICED) for i in range(2)])
    other = run(team_b, [chat_line("b0", PRICED)])
    assert {priced.status, unpriced.status, other.status} == {"completed"}
    assert priced.usage is not None
    assert priced.usage.input_tokens > 0

    page = team_a.admin.organization.usage.costs(start_time=start, group_by=["project_id", "line_item"])
    assert page.object == "page"
    assert not page.has_more
    assert page.data[0].start_time == start
    assert all(bucket.end_time - bucket.start_time <= 86400 for bucket in page.data)
    results = {result.line_item: result for result in results_of(page)}
    assert set(results) == {PRICED, UNPRICED}  # team-a's own, never team-b's
    assert {result.project_id for result in results.values()} == {"team-a"}
    cost = results[PRICED]
    assert cost.amount is not None
    assert cost.amount.currency == "usd"
    assert cost.amount.value == pytest.approx(expected_usd(priced.usage) / 2)  # OpenAI's 50 % batch discount
    extra = cost.model_extra or {}
    assert extra["synchronous_amount"]["value"] == pytest.approx(expected_usd(priced.usage))
    assert extra["saved_amount"]["value"] == pytest.approx(expected_usd(priced.usage) / 2)
    assert extra["priced"] is True
    assert extra["batch_count"] == 1
    assert extra["usage"]["input_tokens"] == priced.usage.input_tokens
    assert extra["usage"]["output_tokens"] == priced.usage.output_tokens
    assert cost.quantity == priced.usage.total_tokens
    assert cost.quantity_unit == "tokens"

    free = results[UNPRICED]
    free_extra = free.model_extra or {}
    assert free.amount is not None
    assert free.amount.value is None  # no price: says so, never 0
    assert free_extra["priced"] is False
    assert UNPRICED in free_extra["message"]
    assert free_extra["synchronous_amount"]["value"] is None
    assert free_extra["usage"]["input_tokens"] > 0

    # Not grouped by model, team-a's total holds unpriced tokens: null too, and it says which.
    [total] = results_of(team_a.admin.organization.usage.costs(start_time=start))
    assert total.amount is not None
    assert total.amount.value is None
    assert (total.project_id, total.line_item) == (None, None)
    assert UNPRICED in (total.model_extra or {})["message"]
    # Another project's id gives nothing of it.
    assert results_of(team_a.admin.organization.usage.costs(start_time=start, project_ids=["team-b"])) == []


def test_an_admin_key_sees_every_project(costs_server: OvernightServer) -> None:
    start = int(time.time()) - 5
    team_a, admin = client_for(costs_server, "key-team-a"), client_for(costs_server, ADMIN)
    done = run(team_a, [chat_line("admin-a", PRICED)])
    assert done.status == "completed"
    page = admin.admin.organization.usage.costs(start_time=start, group_by=["project_id"])
    projects = {result.project_id for result in results_of(page)}
    assert "team-a" in projects
    seen = admin.admin.organization.usage.costs(start_time=0, group_by=["project_id"], limit=180)
    assert len(seen.data) == 180
    assert seen.has_more
    assert seen.next_page
    following = admin.admin.organization.usage.costs(start_time=0, limit=1, page=seen.next_page)
    assert following.data[0].start_time == seen.data[-1].end_time
    only_b = admin.admin.organization.usage.costs(
        start_time=start, group_by=["project_id"], project_ids=["team-b"]
    )
    assert {result.project_id for result in results_of(only_b)} <= {"team-b"}
    assert done.id in {batch.id for batch in admin.batches.list().data}  # an admin lists every project's


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("", "start_time"),
        ("start_time=yesterday", "start_time"),
        ("start_time=100&end_time=50", "end_time"),
        ("start_time=100&bucket_width=1h", "bucket_width"),
        ("start_time=100&limit=0", "limit"),
        ("start_time=100&limit=181", "limit"),
        ("start_time=100&group_by=user_id", "group_by"),
        ("start_time=100&group_by[]=model", "group_by"),
        ("start_time=100&api_key_ids=key_1", "api_key_ids"),
        ("start_time=100&page=page_7", "page"),
    ],
)
def test_bad_parameters_get_openais_error_shape(
    costs_server: OvernightServer, query: str, param: str
) -> None:
    response = httpx2.get(
        f"{costs_server.base_url}/organization/costs?{query}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert error_shape(response, 400)["param"] == param


def hundred_token_line(custom_id: str, **fake: Any) -> dict[str, Any]:
    line = chat_line(custom_id, PRICED, **({"fake": fake} if fake else {}))
    line["body"]["messages"] = [{"role": "user", "content": TOKENS_100}]
    return line


def test_the_budget_refuses_at_create_and_ending_batches_release_it(costs_server: OvernightServer) -> None:
    team_b = client_for(costs_server, "key-team-b")
    held = upload(team_b, [hundred_token_line(f"h{i}", hang=True) for i in range(2)])  # 200 of 250
    running = team_b.batches.create(
        input_file_id=held.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert running.status == "validating"

    one_more = upload(team_b, [hundred_token_line("r0")])
    refused = team_b.batches.create(
        input_file_id=one_more.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert refused.status == "failed"  # created, and failed at once, as OpenAI does
    assert refused.failed_at is not None
    assert refused.errors is not None
    assert refused.errors.data is not None
    [error] = refused.errors.data
    assert error.code == "token_limit_exceeded"
    assert error.message == (
        f"Enqueued token limit reached for {PRICED} in organization team-b. Limit: {BUDGET} enqueued tokens. "
        "Please try again once some in_progress batches have been completed."
    )
    assert team_b.batches.retrieve(refused.id).status == "failed"
    # another project has no budget: the same input runs there
    team_a = client_for(costs_server, "key-team-a")
    assert run(team_a, [hundred_token_line("a0")]).status == "completed"

    team_b.batches.cancel(running.id)  # cancelling still holds its tokens, cancelled releases them
    assert wait_for(team_b, running.id).status == "cancelled"
    accepted = run(team_b, [hundred_token_line("r1")])
    assert accepted.status == "completed"
    # a completed batch released its tokens too: 200 fit again
    assert run(team_b, [hundred_token_line(f"r2-{i}") for i in range(2)]).status == "completed"
    too_big = upload(team_b, [hundred_token_line(f"big{i}") for i in range(3)])  # 300 alone is over 250
    assert (
        team_b.batches.create(
            input_file_id=too_big.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).status
        == "failed"
    )
