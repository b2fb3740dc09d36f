"""An admin key sees every project on the /v1 API (docs/auth.md), on SQLite and on PostgreSQL, against
the real `overnight serve`: it retrieves, downloads, lists, cancels, retries and deletes project alpha's
objects; a member key of another project (beta) still gets 404 for them; and what the admin creates lands
in its own project (ops), where alpha does not see it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI

from acceptance.conftest import WAIT_TIMEOUT_S, chat_line, make_client, upload, wait_for
from acceptance.projects import projects_server
from support.server import FakeUpstreamProcess

ALPHA_KEY = "sk-config-alpha-admin-scope-01"  # alpha's key comes from the config file
SECRET_TEXT = b"alpha-private-content-admin-scope"


@dataclass(frozen=True)
class World:
    base_url: str
    alpha: OpenAI
    beta: OpenAI  # a member of project beta
    admin: OpenAI  # an admin key of project ops
    admin_key: str
    private_id: str  # alpha's user_data file
    input_id: str  # the input of alpha's ended batch
    batch_id: str  # alpha's ended batch: one line succeeded, one failed
    output_id: str
    error_id: str
    running_id: str  # alpha's batch whose line the fake upstream holds
    response_id: str  # alpha's completed background response
    held_response_id: str  # alpha's background response that the fake upstream holds

    def raw(self, key: str) -> httpx2.Client:
        return httpx2.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(
    request: pytest.FixtureRequest, upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"admin-scope-{request.param}")
    with projects_server(root, upstream.base_url, request.param, ALPHA_KEY) as running:
        try:
            yield _alpha_work(running.server.base_url, running.beta_key, running.admin_key)
        finally:
            upstream.control(release=-1)  # the held lines and response end


def _alpha_work(base_url: str, beta: str, admin: str) -> World:
    alpha = make_client(base_url, ALPHA_KEY)
    private = alpha.files.create(file=("alpha-private.txt", SECRET_TEXT), purpose="user_data")
    source = upload(alpha, [chat_line("alpha-1"), chat_line("alpha-2", fake={"status": 400})])
    ended = wait_for(alpha, _batch_of(alpha, source.id).id)
    assert ended.output_file_id is not None
    assert ended.error_file_id is not None
    held = _batch_of(alpha, upload(alpha, [chat_line("alpha-held", fake={"hold": True})]).id)
    response = alpha.responses.create(model="fake-chat", input="alpha-3", background=True)
    held_response = alpha.responses.create(
        model="fake-chat", input="alpha-4", background=True, extra_body={"fake": {"hold": True}}
    )
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while alpha.responses.retrieve(response.id).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, "alpha's background response never ended"
        time.sleep(0.05)
    return World(
        base_url=base_url.removesuffix("/v1"),
        alpha=alpha,
        beta=make_client(base_url, beta),
        admin=make_client(base_url, admin),
        admin_key=admin,
        private_id=private.id,
        input_id=source.id,
        batch_id=ended.id,
        output_id=ended.output_file_id,
        error_id=ended.error_file_id,
        running_id=held.id,
        response_id=response.id,
        held_response_id=held_response.id,
    )


def _batch_of(client: OpenAI, file_id: str) -> Any:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def _ids(items: Any) -> set[str]:
    return {item.id for item in items}


# -- reads and actions by id: any project ------------------------------------------------------------


def test_an_admin_retrieves_and_downloads_another_projects_files(world: World) -> None:
    for file_id in (world.private_id, world.input_id, world.output_id, world.error_id):
        assert world.admin.files.retrieve(file_id) == world.alpha.files.retrieve(file_id)
    with pytest.raises(openai.BadRequestError, match="purpose: user_data"):  # found, as for alpha
        world.admin.files.content(world.private_id)
    assert b"alpha-1" in world.admin.files.content(world.input_id).content
    output = [json.loads(line) for line in world.admin.files.content(world.output_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == ["alpha-1"]
    assert b"alpha-2" in world.admin.files.content(world.error_id).content


def test_an_admin_reads_another_projects_files_by_lines(world: World) -> None:
    with world.raw(world.admin_key) as http:
        first = http.get(f"/v1/files/{world.input_id}/content", params={"limit": 1, "offset": 0})
        output = http.get(f"/v1/files/{world.output_id}/content", params={"limit": 1, "offset": 0})
    assert first.status_code == 200, first.text
    assert (first.headers["X-Incomplete"], first.headers["X-Last-Line"]) == ("true", "1")
    assert b"alpha-1" in first.content
    assert b"alpha-2" not in first.content
    assert output.status_code == 200, output.text
    assert (output.headers["X-Incomplete"], output.headers["X-Last-Line"]) == ("false", "1")


def test_an_admin_retrieves_and_watches_another_projects_batches(world: World) -> None:
    assert world.admin.batches.retrieve(world.batch_id) == world.alpha.batches.retrieve(world.batch_id)
    with world.raw(world.admin_key) as http:
        progress = http.get(f"/v1/batches/{world.batch_id}/progress")
        running = http.get(f"/v1/batches/{world.running_id}/progress")
        assert running.status_code == 200, running.text
        partial = running.json()["partial_results"]
        if partial is not None:  # still running: its results are readable while it runs
            answer = http.get(f"/v1/files/{partial['output_file_id']}/content")
            assert answer.status_code == 200, answer.text
            assert answer.headers["X-Incomplete"] == "true"
    assert progress.status_code == 200, progress.text
    assert progress.json()["request_counts"] == {"total": 2, "completed": 1, "failed": 1}


def test_an_admin_lists_every_projects_objects(world: World) -> None:
    mine = world.admin.files.create(file=("ops.jsonl", b"{}\n"), purpose="user_data")
    alphas = {world.private_id, world.input_id, world.output_id, world.error_id}
    assert alphas | {mine.id} <= _ids(world.admin.files.list(limit=10_000))
    assert {world.output_id} <= _ids(world.admin.files.list(purpose="batch_output", limit=10_000))
    assert {world.batch_id, world.running_id} <= _ids(world.admin.batches.list(limit=100))
    assert not alphas & _ids(world.beta.files.list(limit=10_000))  # a member lists only its own
    assert not {world.batch_id, world.running_id} & _ids(world.beta.batches.list(limit=100))
    assert mine.id not in _ids(world.alpha.files.list(limit=10_000))


def test_an_admin_cancels_another_projects_batch(world: World) -> None:
    with pytest.raises(openai.NotFoundError):
        world.beta.batches.cancel(world.running_id)
    cancelled = world.admin.batches.cancel(world.running_id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert world.alpha.batches.retrieve(world.running_id).status in ("cancelling", "cancelled")


def test_an_admin_retries_another_projects_batch_in_that_project(world: World) -> None:
    with world.raw(world.admin_key) as http:
        answer = http.post(f"/v1/batches/{world.batch_id}/retry", json={})
    assert answer.status_code == 200, answer.text
    retried = answer.json()
    assert retried["metadata"]["retry_of"] == world.batch_id
    mine = world.alpha.batches.retrieve(retried["id"])  # alpha's work: a batch of alpha's
    assert world.alpha.files.retrieve(mine.input_file_id).filename == f"{world.batch_id}_retry.jsonl"
    with pytest.raises(openai.NotFoundError):
        world.beta.batches.retrieve(retried["id"])
    counts = wait_for(world.alpha, retried["id"]).request_counts
    assert counts is not None
    assert counts.total == 1  # the one failed line


def test_an_admin_reads_and_cancels_another_projects_background_responses(world: World) -> None:
    assert world.admin.responses.retrieve(world.response_id).status == "completed"
    with pytest.raises(openai.NotFoundError):
        world.beta.responses.cancel(world.held_response_id)
    assert world.admin.responses.cancel(world.held_response_id).status == "cancelled"
    assert world.alpha.responses.retrieve(world.held_response_id).status == "cancelled"


def test_an_admin_deletes_another_projects_file(world: World) -> None:
    doomed = world.alpha.files.create(file=("doomed.txt", b"bye"), purpose="user_data")
    with pytest.raises(openai.NotFoundError):
        world.beta.files.delete(doomed.id)
    assert world.admin.files.delete(doomed.id).deleted
    with pytest.raises(openai.NotFoundError):
        world.alpha.files.retrieve(doomed.id)


def test_a_member_of_another_project_still_gets_404(world: World) -> None:
    for file_id in (world.private_id, world.input_id, world.output_id, world.error_id):
        with pytest.raises(openai.NotFoundError):
            world.beta.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            world.beta.files.content(file_id)
    with pytest.raises(openai.NotFoundError):
        world.beta.batches.retrieve(world.batch_id)
    with pytest.raises(openai.NotFoundError):
        world.beta.responses.retrieve(world.response_id)


# -- creates: the admin's own project ----------------------------------------------------------------


def test_what_an_admin_creates_is_its_own_projects(world: World) -> None:
    source = upload(world.admin, [chat_line("ops-1")], name="ops.jsonl")
    with pytest.raises(openai.NotFoundError):
        world.alpha.files.retrieve(source.id)
    with pytest.raises(openai.NotFoundError):  # a batch is made of the admin's own project's files
        _batch_of(world.admin, world.input_id)
    batch = wait_for(world.admin, _batch_of(world.admin, source.id).id)
    assert batch.status == "completed"
    assert batch.output_file_id is not None
    with pytest.raises(openai.NotFoundError):
        world.alpha.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        world.alpha.files.retrieve(batch.output_file_id)
    assert batch.id not in _ids(world.alpha.batches.list(limit=100))
    response = world.admin.responses.create(model="fake-chat", input="ops-2", background=True)
    with pytest.raises(openai.NotFoundError):
        world.alpha.responses.retrieve(response.id)
    assert world.admin.responses.retrieve(response.id).id == response.id
