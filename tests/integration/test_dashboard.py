"""What a person sees on the dashboard, in a real browser: live progress, cancelling, the projects kept
apart, signing in and out, the empty and every-line-failed states. Screenshots: test-artifacts/dashboard/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from openai.types import Batch

from acceptance.conftest import chat_line, upload, wait_for
from integration.conftest import KEY_A, KEY_ADMIN, KEY_B, Site, screenshot, sign_in

if TYPE_CHECKING:
    from playwright.sync_api import Page

COMPLETED = "#counts [data-testid=completed]"


def start(site: Site, key: str, lines: list[dict[str, Any]], **extra: Any) -> Batch:
    client = site.client(key)
    file = upload(client, lines)
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


def slow_lines(count: int, delay_ms: int) -> list[dict[str, Any]]:
    return [chat_line(f"slow-{i}", fake={"delay_ms": delay_ms}) for i in range(count)]


def status_shown(page: Page) -> str:
    return page.locator("#live [data-testid=status]").first.inner_text().strip()


def wait_for_status(page: Page, *shown: str) -> None:
    """Until the live part of the page shows one of these statuses (as the badge words them)."""
    page.wait_for_function(
        "shown => shown.includes(document.querySelector('#live [data-testid=status]').textContent)",
        arg=list(shown),
    )


@pytest.fixture(scope="module")
def done_batch(site: Site) -> Batch:
    """A finished batch of project team-a."""
    batch = start(site, KEY_A, [chat_line("secret-done-1"), chat_line("secret-done-2")])
    finished = wait_for(site.client(KEY_A), batch.id)
    assert finished.status == "completed"
    return finished


def test_without_a_key_only_the_sign_in_form_shows(page: Page, site: Site, done_batch: Batch) -> None:
    for path in ("/", f"/ui/batches/{done_batch.id}"):
        response = page.goto(site.root + path)
        assert response is not None
        assert response.status == 401
        assert page.locator("#signin").is_visible()
        assert page.locator("#live, #batches, [data-testid=status]").count() == 0
        assert done_batch.id not in page.locator("main").inner_text()
    screenshot(page, "signin")
    for path in (
        "/ui/fragments/batches",
        f"/ui/fragments/batches/{done_batch.id}",
        f"/ui/files/{done_batch.input_file_id}/content",
        f"/ui/files/{done_batch.output_file_id}/content",
    ):
        answer = page.request.get(site.root + path)
        assert answer.status == 401, path
        assert b"slow-" not in answer.body()
        assert b"secret-done-" not in answer.body()
        assert done_batch.id.encode() not in answer.body()

    page.goto(site.root + "/")
    page.fill("#key", "sk-not-a-key-of-this-server")
    page.click("#signin button[type=submit]")
    assert "not accepted" in page.locator("#signin [role=alert]").inner_text()
    assert page.locator("#live").count() == 0

    page.context.add_cookies([{"name": "overnight_key", "value": "forged", "url": site.root}])
    page.goto(site.root + "/")
    assert page.locator("#signin").is_visible()
    assert page.locator("#live").count() == 0


def test_a_project_without_batches_is_told_how_to_start(page: Page, site: Site) -> None:
    sign_in(page, site, KEY_B)
    empty = page.locator("#empty")
    assert empty.is_visible()
    text = empty.inner_text()
    assert "No batches yet" in text
    assert f"{site.root}/v1" in text
    assert "client.batches.create(" in text
    assert "curl " in text
    assert page.locator("#backends").is_visible()
    screenshot(page, "empty")


def test_a_key_of_another_project_sees_nothing_of_this_one(page: Page, site: Site, done_batch: Batch) -> None:
    sign_in(page, site, KEY_B)
    assert page.locator("[data-testid=who]").inner_text() == "project team-b"
    assert page.locator(f"[data-batch-id='{done_batch.id}']").count() == 0
    assert page.locator("#empty").is_visible()

    def problem(path: str, own_id: str) -> str:
        response = page.goto(site.root + path)
        assert response is not None
        assert response.status == 404, path
        return page.locator("#problem").inner_text().replace(own_id, "ID")

    theirs = problem(f"/ui/batches/{done_batch.id}", done_batch.id)
    assert theirs == problem("/ui/batches/batch_0000000000000000missing", "batch_0000000000000000missing")
    screenshot(page, "other-project-404")
    file_id = done_batch.input_file_id
    missing_file = problem("/ui/files/file-missing/content", "file-missing")
    assert problem(f"/ui/files/{file_id}/content", file_id) == missing_file
    assert problem(f"/ui/files/{file_id}/content?project=team-a", file_id) == missing_file
    for answer in (
        page.request.get(f"{site.root}/ui/fragments/batches/{done_batch.id}"),
        page.request.post(f"{site.root}/ui/batches/{done_batch.id}/cancel", headers={"Origin": site.root}),
    ):
        assert answer.status == 404
        assert b"secret-done-" not in answer.body()
    listing = page.request.get(f"{site.root}/ui/fragments/batches")
    assert listing.status == 200
    assert done_batch.id.encode() not in listing.body()


def test_a_running_batch_moves_on_the_page_without_a_reload(page: Page, site: Site) -> None:
    lines = [chat_line(f"step-{i}", fake={"delay_ms": 250 * i}) for i in range(30)]
    lines.append(chat_line("last", fake={"delay_ms": 15_000}))  # still running when the page opens
    batch = start(site, KEY_A, lines)
    sign_in(page, site, KEY_A, f"/ui/batches/{batch.id}")
    first = int(page.locator(COMPLETED).inner_text())
    assert page.locator("#counts [data-testid=total]").inner_text() in ("0", "31")
    page.evaluate("window.notReloaded = true")
    page.wait_for_function(
        "first => Number(document.querySelector('#counts [data-testid=completed]').textContent) > first",
        arg=first,
    )
    assert page.evaluate("window.notReloaded") is True
    assert status_shown(page) in ("in progress", "finalizing", "completed")
    for part in ("#counts", "#chart", "#errors", "#usage", "#files", "#details"):
        assert page.locator(part).is_visible(), part
    assert page.locator("[data-testid=eta]").inner_text()
    screenshot(page, "batch-running")

    listing = page.context.new_page()
    listing.goto(site.root + "/")
    row = listing.locator(f"[data-batch-id='{batch.id}']")
    assert row.is_visible()
    assert row.locator("[data-testid=status]").inner_text() in ("in progress", "finalizing", "completed")
    screenshot(listing, "list-running")
    listing.close()

    wait_for_status(page, "completed")
    assert page.evaluate("window.notReloaded") is True
    assert page.locator(COMPLETED).inner_text() == "31"
    screenshot(page, "batch-completed")


def test_the_cancel_button_cancels(page: Page, site: Site) -> None:
    batch = start(site, KEY_A, slow_lines(4, 30_000))
    sign_in(page, site, KEY_A, f"/ui/batches/{batch.id}")
    page.click("#cancel")  # its confirmation is accepted (the `page` fixture)
    wait_for_status(page, "cancelling", "cancelled")
    assert site.client(KEY_A).batches.retrieve(batch.id).status in ("cancelling", "cancelled")
    screenshot(page, "batch-cancelling")
    ended = wait_for(site.client(KEY_A), batch.id)
    assert ended.status == "cancelled"
    wait_for_status(page, "cancelled")
    assert page.locator("#cancel").count() == 0


def test_every_line_failed_points_at_the_error_file_and_its_group(page: Page, site: Site) -> None:
    hostile = "<img src=x onerror=window.injected=1>"
    lines = [chat_line(f"{hostile}-{i}", fake={"status": 400}) for i in range(3)]
    metadata = {"note": "<script>window.injected = 2</script>"}
    batch = start(site, KEY_A, lines, metadata=metadata)
    ended = wait_for(site.client(KEY_A), batch.id)
    assert ended.request_counts is not None
    assert ended.request_counts.failed == 3
    sign_in(page, site, KEY_A, f"/ui/batches/{batch.id}")
    alert = page.locator("#all-failed")
    assert alert.is_visible()
    assert "Every line failed" in alert.inner_text()
    group = page.locator("[data-testid=error-group]").first
    assert "400" in group.inner_text()
    assert hostile in group.locator("pre").inner_text()
    assert "<script>window.injected = 2</script>" in page.locator("[data-testid=metadata]").inner_text()
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.injected") is None
    screenshot(page, "batch-all-failed")
    with page.expect_download() as download:
        alert.locator("a").click()
    lines_back = Path(download.value.path()).read_text().splitlines()
    assert len(lines_back) == 3
    assert all(json.loads(line)["custom_id"].startswith(hostile) for line in lines_back)


def test_an_admin_sees_every_project(page: Page, site: Site, done_batch: Batch) -> None:
    sign_in(page, site, KEY_ADMIN)
    assert page.locator("[data-testid=who]").inner_text() == "admin · every project"
    row = page.locator(f"[data-batch-id='{done_batch.id}']")
    assert row.locator("[data-testid=project]").inner_text() == "team-a"
    screenshot(page, "admin-list")
    row.locator("a").first.click()
    page.wait_for_selector("#files")
    assert status_shown(page) == "completed"
    with page.expect_download() as download:
        page.click("[data-testid=input-file]")
    assert len(Path(download.value.path()).read_text().splitlines()) == 2


def test_other_sites_cannot_post_and_signing_out_ends_it(page: Page, site: Site) -> None:
    batch = start(site, KEY_A, slow_lines(2, 30_000))
    sign_in(page, site, KEY_A)
    cookie = next(c for c in page.context.cookies() if c["name"] == "overnight_key")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert page.evaluate("document.cookie") == ""
    cancel_url = f"{site.root}/ui/batches/{batch.id}/cancel"
    for headers in ({"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}, {}):
        refused = page.request.post(cancel_url, headers=headers, max_redirects=0)
        assert refused.status == 403, headers
    assert site.client(KEY_A).batches.retrieve(batch.id).status in ("validating", "in_progress")
    foreign = page.request.post(
        f"{site.root}/ui/signin", form={"key": KEY_B}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status == 403
    assert page.locator("[data-testid=who]").inner_text() == "project team-a"

    page.click("text=Sign out")
    page.wait_for_selector("#signin")
    assert page.request.get(f"{site.root}/ui/fragments/batches").status == 401
    site.client(KEY_A).batches.cancel(batch.id)
