"""Progress, error groups and backends on the real server: GET /v1/batches/{id}/progress while a batch
runs against the fake upstream, and what the dashboard's service reads from the server's store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2
import pytest
from openai import OpenAI

from overnight.domain.clock import SystemClock
from overnight.domain.errors import NotFound
from overnight.domain.progress import BackendView
from overnight.services.progress import ProgressService
from overnight.store.sqlite import SqliteStore
from support.server import OvernightServer

from .conftest import TERMINAL, chat_line, make_client, upload, wait_for

AUTH = {"Authorization": "Bearer test-key"}
POLL_TIMEOUT_S = 120.0
SLOW_LINES = 320  # at 16 in flight and 0.5 s each: about 10 s, so two samples 5 s apart come in time


def progress_of(server: OvernightServer, batch_id: str) -> dict[str, Any]:
    response = httpx2.get(f"{server.base_url}/batches/{batch_id}/progress", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_progress_moves_and_the_eta_is_unknown_at_first(server: OvernightServer, client: OpenAI) -> None:
    lines = [chat_line(f"slow-{n}", fake={"delay_ms": 500}) for n in range(SLOW_LINES)]
    batch = client.batches.create(
        input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        progress = progress_of(server, batch.id)
        if progress["status"] == "in_progress":
            seen.append(progress)
        if progress["status"] in TERMINAL:
            break
        time.sleep(0.1)
    assert seen, "the batch was never seen in progress"
    first = seen[0]
    assert set(first) == {
        "object",
        "id",
        "status",
        "request_counts",
        "rate_per_second",
        "eta_seconds",
        "window_left_seconds",
        "samples",
        "partial_results",
    }
    assert (first["object"], first["id"], first["request_counts"]["total"]) == (
        "batch.progress",
        batch.id,
        SLOW_LINES,
    )
    assert first["eta_seconds"] is None
    assert first["rate_per_second"] is None
    assert 0 < first["window_left_seconds"] <= 86400
    done = [p["request_counts"]["completed"] + p["request_counts"]["failed"] for p in seen]
    assert done == sorted(done)
    assert done[-1] > done[0]
    known = [p for p in seen if p["eta_seconds"] is not None]
    assert known, "the ETA never became known while the batch ran"
    for p in known:
        left = SLOW_LINES - p["request_counts"]["completed"] - p["request_counts"]["failed"]
        assert p["rate_per_second"] > 0
        assert p["eta_seconds"] >= (1 if left else 0)

    ended = progress_of(server, batch.id)
    assert ended["status"] == "completed"
    assert ended["eta_seconds"] == 0
    assert ended["request_counts"] == {"total": SLOW_LINES, "completed": SLOW_LINES, "failed": 0}
    samples = ended["samples"]
    assert len(samples) >= 2
    assert samples[-1]["completed"] == SLOW_LINES
    assert [s["at"] for s in samples] == sorted(s["at"] for s in samples)
    # The Batch object itself is exactly OpenAI's (strict mode passes); the SDK reaches the extension.
    assert client.batches.retrieve(batch.id).status == "completed"
    again = client.get(f"/batches/{batch.id}/progress", cast_to=dict)
    assert {**again, "window_left_seconds": 0} == {**ended, "window_left_seconds": 0}


def test_progress_of_another_projects_batch_is_not_found(server: OvernightServer, client: OpenAI) -> None:
    response = httpx2.get(f"{server.base_url}/batches/batch_nope/progress", headers=AUTH, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "No batch found with id 'batch_nope'."


async def test_errors_are_grouped_by_code_and_status(server: OvernightServer) -> None:
    client = make_client(server.base_url)
    lines = [chat_line(f"ok-{n}") for n in range(5)]
    lines += [chat_line(f"bad-{n}", fake={"status": 400}) for n in range(3)]
    lines += [chat_line(f"gone-{n}", fake={"status": 404}) for n in range(2)]
    lines += [chat_line(f"broken-{n}", fake={"status": 500}) for n in range(2)]
    lines.append(chat_line("reset-0", fake={"reset": True}))
    created = client.batches.create(
        input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = wait_for(client, created.id)
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert batch.request_counts.failed == 8

    store = SqliteStore(server.data_dir / "overnight.db")
    await store.open()
    try:
        service = ProgressService(store, SystemClock())
        groups = await service.error_groups(None, batch.id)
        assert [(g.code, g.status, g.count) for g in groups] == [
            ("fake_400", 400, 3),
            ("fake_404", 404, 2),
            ("fake_500", 500, 2),
            ("upstream_unreachable", None, 1),
        ]
        for group in groups:
            assert group.example.startswith(b'{"id":"batch_req_')
        assert b'"custom_id":"bad-0"' in groups[0].example  # the first line of its group
        with pytest.raises(NotFound):
            await service.error_groups("another-project", batch.id)
        fake = await backend_view(service, "fake")
        assert (fake.limit, fake.breaker, fake.workers) == (16, "closed", 1)
        assert fake.attempts >= 13
        assert fake.failures >= 3
        assert fake.error_rate is not None
        assert 0 < fake.error_rate < 1
    finally:
        await store.close()


async def backend_view(service: ProgressService, name: str) -> BackendView:
    """The backend's view once a report of it counts this test's attempts (workers report every ~2 s)."""
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        views = {view.backend: view for view in await service.backends()}
        view = views.get(name)
        if view is not None and view.failures >= 3:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"no fresh report of backend {name}: {views}")
        await asyncio.sleep(0.2)
