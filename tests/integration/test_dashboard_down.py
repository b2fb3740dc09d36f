"""An upstream that is down, as the dashboard shows it in a real browser: a server (without keys) whose only
backend's port refuses connections, and a batch sent to it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from acceptance.conftest import chat_line, upload, write_config
from integration.conftest import Site, screenshot
from support.server import OvernightServer

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture(scope="module")
def refusing_port() -> Iterator[int]:
    """A loopback port bound but never listening: every connection to it is refused (and, bound, no other
    process takes it meanwhile)."""
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    yield held.getsockname()[1]
    held.close()


@pytest.fixture(scope="module")
def down_site(refusing_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard-down")
    config = write_config(root / "overnight.toml", f"http://127.0.0.1:{refusing_port}/v1")
    server = OvernightServer(root / "data", config)
    server.start()
    yield Site(server)
    server.stop()


def test_an_upstream_down_says_so_and_what_to_check(page: Page, down_site: Site) -> None:
    client = down_site.client("local")
    file = upload(client, [chat_line(f"down-{i}") for i in range(8)])
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    page.goto(down_site.root + "/")
    alert = page.locator("[data-testid=backend-alert]")
    alert.wait_for()  # the list refreshes itself: no reload
    text = alert.inner_text()
    assert "Upstream fake looks down:" in text
    assert "[[backends]]" in text
    assert "base_url" in text
    assert page.locator("#backends tr.trouble[data-backend=fake]").is_visible()
    assert page.locator(f"[data-batch-id='{batch.id}']").is_visible()
    screenshot(page, "upstream-down")
