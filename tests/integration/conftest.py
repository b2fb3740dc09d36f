"""The dashboard in a real browser: Debian's chromium driven by Playwright, against the real server process
with keys of two projects and an admin's, in front of the fake upstream."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from openai import OpenAI

from acceptance.conftest import make_client, write_config
from support.server import FakeUpstreamProcess, OvernightServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("OVERNIGHT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
KEY_A, KEY_B, KEY_ADMIN = "sk-dash-alpha-0001", "sk-dash-beta-0002", "sk-dash-admin-0003"
WAIT_MS = 60_000  # what a page may take to show something: generous, the machine may be busy


def _chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        pytest.skip(
            f"the dashboard's browser tests need Debian's chromium at {CHROMIUM}: "
            "run `apt-get install chromium` (as root), then run them again"
        )
    return path


# Module-scoped: while Playwright's sync API is open, its event loop runs in this thread, and an async
# test (pytest-asyncio) of another module could not start one of its own.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the dashboard's browser tests need playwright: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstreamProcess]:
    fake = FakeUpstreamProcess()
    yield fake
    fake.stop()


@dataclass(frozen=True)
class Site:
    """The server under test: its root URL and an SDK client per key."""

    server: OvernightServer

    @property
    def root(self) -> str:
        return self.server.base_url.removesuffix("/v1")

    def client(self, key: str) -> OpenAI:
        return make_client(self.server.base_url, key)


@pytest.fixture(scope="module")
def site(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard")
    config = write_config(
        root / "overnight.toml", upstream.base_url, api_keys={KEY_A: "team-a", KEY_B: "team-b"}
    )
    with config.open("a") as toml:  # an array of tables may go on after another table
        toml.write(f'[[api_keys]]\nkey = "{KEY_ADMIN}"\nproject = "ops"\nadmin = true\n')
    server = OvernightServer(root / "data", config)
    server.start()
    yield Site(server)
    server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page; dialogs (the cancel confirmation) are accepted."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())
    yield opened
    context.close()


def sign_in(page: Page, site: Site, key: str, path: str = "/") -> None:
    page.goto(site.root + path)
    page.fill("#key", key)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("[data-testid=who]")


def screenshot(page: Page, name: str) -> Path:
    """Save the page as a test artifact; fail if it shows nothing."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    text = page.locator("main").inner_text().strip()
    assert text, f"the page is blank (screenshot {path})"
    assert path.stat().st_size > 1000, f"the screenshot {path} is empty"
    return path


def wait_until(check: Callable[[], Any], timeout: float = WAIT_MS / 1000, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met after {timeout} s")
        time.sleep(0.1)
    return result
