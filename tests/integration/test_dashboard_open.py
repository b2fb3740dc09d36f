"""The dashboard of a server without API keys (`make serve` as it comes): no sign-in, everything visible."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from acceptance.conftest import write_config
from integration.conftest import Site, screenshot
from support.server import FakeUpstreamProcess, OvernightServer

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture(scope="module")
def open_site(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard-open")
    server = OvernightServer(root / "data", write_config(root / "overnight.toml", upstream.base_url))
    server.start()
    yield Site(server)
    server.stop()


def test_a_new_user_sees_how_to_start_without_signing_in(page: Page, open_site: Site) -> None:
    response = page.goto(open_site.root + "/")
    assert response is not None
    assert response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.locator("#signin").count() == 0
    assert page.locator("text=Sign out").count() == 0
    assert page.locator("[data-testid=who]").inner_text() == "admin · every project"
    empty = page.locator("#empty").inner_text()
    assert "No batches yet" in empty
    assert 'api_key="local"' in empty
    screenshot(page, "first-visit")
