"""The dashboard's costs page in a real browser, against the real server with a price for one model and none
for another: batches and a synchronous request, the figures a person reads, "no price configured" (never
$0), the projects kept apart, and an admin's view of every project. Screenshots: test-artifacts/dashboard/."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import pytest
from openai import OpenAI
from openai.types import Batch

from acceptance.conftest import chat_line, upload, wait_for, write_config
from integration.conftest import Site, screenshot, sign_in, wait_until
from overnight.http.dashboard_views import usd
from support.server import FakeUpstreamProcess, OvernightServer

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

KEY_A, KEY_B, KEY_C, KEY_ADMIN = "sk-costs-alpha-1", "sk-costs-beta-2", "sk-costs-gamma-3", "sk-costs-admin-4"
PRICED, UNPRICED = "fake-chat", "gpt-4o-mini"
INPUT_USD, OUTPUT_USD = 2000.0, 8000.0  # per million tokens: a few tokens read as cents
DAY_S = 86400


@pytest.fixture(scope="module")
def costs_site(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard-costs")
    keys = {KEY_A: "team-a", KEY_B: "team-b", KEY_C: "team-c"}
    config = write_config(
        root / "overnight.toml", upstream.base_url, api_keys=keys, sync_usage_flush_interval_s=0.05
    )
    with config.open("a") as toml:  # an array of tables may go on after another table
        toml.write(f'[[api_keys]]\nkey = "{KEY_ADMIN}"\nproject = "ops"\nadmin = true\n')
        toml.write(f'[[prices]]\nmodel = "fake-chat*"\ninput = {INPUT_USD}\noutput = {OUTPUT_USD}\n')
    server = OvernightServer(root / "data", config)
    server.start()
    yield Site(server)
    server.stop()


def run(client: OpenAI, lines: list[dict[str, Any]]) -> Batch:
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    ended = wait_for(client, batch.id)
    assert ended.status == "completed"
    assert ended.usage is not None
    return ended


def synchronous_requests(site: Site, key: str) -> int:
    """The synchronous requests the costs endpoint counts for this key's project (since yesterday)."""
    answer = httpx2.get(
        f"{site.server.base_url}/organization/costs",
        params={"start_time": str(int(time.time()) // DAY_S * DAY_S - DAY_S), "group_by": "line_item"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 200
    results = [result for bucket in answer.json()["data"] for result in bucket["results"]]
    return sum(result["request_count"] or 0 for result in results if result["source"] == "sync")


def batch_usd(batch: Batch, share: float = 0.5) -> float:
    assert batch.usage is not None
    return (batch.usage.input_tokens * INPUT_USD + batch.usage.output_tokens * OUTPUT_USD) / 1e6 * share


@dataclass(frozen=True)
class TeamA:
    priced: Batch
    unpriced: Batch
    sync_usd: float


@pytest.fixture(scope="module")
def team_a(costs_site: Site) -> TeamA:
    """Team-a's usage: a batch of a priced model, one of a model without a price, a synchronous request."""
    client = costs_site.client(KEY_A)
    priced = run(client, [chat_line(f"p{i}", PRICED) for i in range(3)])
    unpriced = run(client, [chat_line(f"u{i}", UNPRICED) for i in range(2)])
    answer = client.chat.completions.create(model=PRICED, messages=[{"role": "user", "content": "hello"}])
    assert answer.usage is not None
    wait_until(lambda: synchronous_requests(costs_site, KEY_A) == 1, what="the synchronous usage stored")
    sync_usd = (answer.usage.prompt_tokens * INPUT_USD + answer.usage.completion_tokens * OUTPUT_USD) / 1e6
    return TeamA(priced, unpriced, sync_usd)


def line(page: Page, model: str, source: str) -> Locator:
    return page.locator(f"[data-testid=cost-line][data-model='{model}'][data-source='{source}']")


def test_the_costs_page_shows_each_models_cost_and_says_when_it_has_no_price(
    page: Page, costs_site: Site, team_a: TeamA
) -> None:
    sign_in(page, costs_site, KEY_A, "/ui/costs")
    assert page.locator("h1").inner_text() == "Costs"
    assert page.locator("nav a[href='/ui/costs']").is_visible()  # in the top bar

    priced = line(page, PRICED, "batch")
    assert priced.count() == 1
    assert team_a.priced.usage is not None
    assert (
        priced.locator("[data-testid=input-tokens]").inner_text() == f"{team_a.priced.usage.input_tokens:,}"
    )
    assert priced.locator("[data-testid=charged]").inner_text() == usd(batch_usd(team_a.priced))
    assert priced.locator("[data-testid=synchronous]").inner_text() == usd(batch_usd(team_a.priced, 1.0))
    assert priced.locator("[data-testid=saved]").inner_text() == usd(batch_usd(team_a.priced))
    assert "1 batch" in priced.inner_text()

    synchronous = line(page, PRICED, "synchronous")
    assert "1 request" in synchronous.inner_text()
    assert synchronous.locator("[data-testid=charged]").inner_text() == usd(team_a.sync_usd)

    unpriced = line(page, UNPRICED, "batch")
    assert unpriced.locator("[data-testid=unpriced]").inner_text().startswith("no price configured for")
    assert UNPRICED in unpriced.inner_text()
    assert "$" not in unpriced.inner_text()  # never $0
    assert team_a.unpriced.usage is not None
    assert unpriced.locator("[data-testid=input-tokens]").inner_text() == (
        f"{team_a.unpriced.usage.input_tokens:,}"
    )
    alert = page.locator("#unpriced")
    assert f'model = "{UNPRICED}"' in alert.locator("[data-testid=price-snippet]").inner_text()

    total = page.locator("#totals tr[data-project='team-a']")
    assert "no price configured for" in total.inner_text()
    priced_alone = usd(batch_usd(team_a.priced) + team_a.sync_usd)
    assert f"the priced models alone: {priced_alone}" in total.inner_text()
    assert page.locator("[data-testid=project]").count() == 0  # one project: no project column
    screenshot(page, "costs")

    page.goto(costs_site.root + "/ui/costs?days=1")
    assert page.locator("nav.periods a.current").inner_text() == "today"
    assert line(page, PRICED, "batch").count() == 1
    refused = page.goto(costs_site.root + "/ui/costs?days=soon")
    assert refused is not None
    assert refused.status == 400
    assert "Choose a period" in page.locator("#problem").inner_text()


def test_another_projects_key_and_no_key_see_none_of_it(page: Page, costs_site: Site, team_a: TeamA) -> None:
    response = page.goto(costs_site.root + "/ui/costs")
    assert response is not None
    assert response.status == 401
    assert page.locator("#signin").is_visible()
    assert PRICED not in page.content()

    sign_in(page, costs_site, KEY_C, "/ui/costs")
    empty = page.locator("#empty")
    assert "No usage yet" in empty.inner_text()
    assert "project team-c" in empty.inner_text()
    assert page.locator("[data-testid=cost-line], #totals, #unpriced").count() == 0
    for text in (PRICED, UNPRICED, "team-a"):
        assert text not in page.locator("main").inner_text()
    screenshot(page, "costs-empty")


def test_an_admin_sees_every_projects_costs(page: Page, costs_site: Site, team_a: TeamA) -> None:
    theirs = run(costs_site.client(KEY_B), [chat_line("b0", PRICED)])
    sign_in(page, costs_site, KEY_B, "/ui/costs")
    assert page.locator("[data-testid=cost-line]").count() == 1  # its own batch only
    assert UNPRICED not in page.locator("main").inner_text()
    assert line(page, PRICED, "synchronous").count() == 0
    page.click("text=Sign out")
    page.wait_for_selector("#signin")

    sign_in(page, costs_site, KEY_ADMIN, "/ui/costs")
    projects = page.locator("#by-day [data-testid=project]").all_inner_texts()
    assert {"team-a", "team-b"} <= set(projects)
    totals = page.locator("#totals tbody tr")
    assert {"team-a", "team-b", "every project"} <= {
        totals.nth(i).get_attribute("data-project") for i in range(totals.count())
    }
    team_b = page.locator("#totals tr[data-project='team-b']")
    assert team_b.locator("[data-testid=charged]").inner_text() == usd(batch_usd(theirs))
    assert "no price configured" in page.locator("#totals tr[data-project='every project']").inner_text()
    screenshot(page, "costs-admin")
