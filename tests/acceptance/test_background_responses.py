"""Background responses (docs/background.md) through the real server and the official SDK in strict mode:
create, poll to the end, cancel, delete, an upstream failure passed through, another project's id, and
kill -9 while one is queued or in flight."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response

from acceptance.conftest import WAIT_TIMEOUT_S, make_client, write_config
from support.fake_bodies import REPLY
from support.server import FakeUpstreamProcess, OvernightServer

KEYS = {"key-a": "project-a", "key-b": "project-b"}
UNFINISHED = {"queued", "in_progress"}


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("background")
    srv = OvernightServer(
        root / "data", write_config(root / "overnight.toml", upstream.base_url, api_keys=KEYS)
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: OvernightServer) -> OpenAI:
    return make_client(server.base_url, "key-a")


def create(client: OpenAI, **fake: Any) -> Response:
    extra = {"fake": fake} if fake else None
    return client.responses.create(model="fake-chat", input="Say hello.", background=True, extra_body=extra)


def wait_for(
    client: OpenAI, response_id: str, done: Callable[[Response], bool] = lambda r: r.status not in UNFINISHED
) -> Response:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        response = client.responses.retrieve(response_id)
        if done(response):
            return response
        if time.monotonic() > deadline:
            raise TimeoutError(f"response {response_id} still {response.status} after {WAIT_TIMEOUT_S} s")
        time.sleep(0.05)


def test_a_background_response_is_queued_then_completes(client: OpenAI) -> None:
    created = create(client)
    assert created.status == "queued"
    assert created.id.startswith("resp_")
    assert (created.background, created.output, created.model) == (True, [], "fake-chat")
    done = wait_for(client, created.id)
    assert done.status == "completed"
    assert (done.id, done.created_at, done.background) == (created.id, created.created_at, True)
    assert done.output_text == REPLY
    assert done.completed_at is not None
    assert done.usage is not None
    assert done.usage.output_tokens > 0
    assert client.responses.retrieve(created.id).model_dump() == done.model_dump()  # it stays


def test_its_batch_and_files_stay_out_of_the_lists(client: OpenAI) -> None:
    done = wait_for(client, create(client).id)
    assert done.status == "completed"
    suffix = done.id.removeprefix("resp_")
    assert not [batch for batch in client.batches.list() if suffix in batch.id]
    assert not [file for file in client.files.list() if suffix in file.id]


def test_cancel_an_in_flight_response(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    key = uuid.uuid4().hex
    created = create(client, delay_ms=60_000, key=key)
    wait_for(client, created.id, lambda r: r.status == "in_progress")
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while upstream.stats()["by_key"].get(key, 0) == 0:  # the request has reached the model server
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = client.responses.cancel(created.id)
    assert (cancelled.id, cancelled.status, cancelled.output) == (created.id, "cancelled", [])
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    assert client.responses.retrieve(created.id).status == "cancelled"


def test_cancel_a_queued_response_and_a_finished_one(client: OpenAI) -> None:
    created = create(client, delay_ms=60_000)
    assert client.responses.cancel(created.id).status == "cancelled"
    assert wait_for(client, created.id).status == "cancelled"
    done = wait_for(client, create(client).id)
    assert done.status == "completed"
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a completed response"):
        client.responses.cancel(done.id)
    assert client.responses.retrieve(done.id).status == "completed"


def test_an_upstream_failure_passes_its_error_through(client: OpenAI) -> None:
    failed = wait_for(client, create(client, status=400).id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "invalid_prompt"
    assert failed.error.message == "The fake upstream was told to answer 400."
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a failed response"):
        client.responses.cancel(failed.id)


def test_what_background_mode_refuses_at_once(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist") as unknown:
        client.responses.create(model="no-such-model", input="hi", background=True)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="'store' cannot be false") as stored:
        client.responses.create(model="fake-chat", input="hi", background=True, store=False)
    assert stored.value.param == "store"
    with pytest.raises(openai.BadRequestError, match="not supported yet") as streamed:
        client.responses.create(model="fake-chat", input="hi", background=True, stream=True)
    assert streamed.value.param == "stream"
    created = create(client)
    with pytest.raises(openai.BadRequestError, match="not supported yet"):
        client.responses.retrieve(created.id, stream=True)


def test_another_projects_response_is_not_found(client: OpenAI, server: OvernightServer) -> None:
    created = create(client)
    other = make_client(server.base_url, "key-b")
    for call in (other.responses.retrieve, other.responses.cancel):
        with pytest.raises(openai.NotFoundError, match=f"Response with id '{created.id}' not found."):
            call(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_0123456789abcdef0123456789abcdef")
    assert wait_for(client, created.id).status == "completed"


def assert_gone(client: OpenAI, response_id: str) -> None:
    """Every route about the response answers as for an id that never was."""
    message = f"Response with id '{response_id}' not found."
    for call in (client.responses.retrieve, client.responses.cancel, client.responses.delete):
        with pytest.raises(openai.NotFoundError, match=message):
            call(response_id)


def test_delete_a_completed_response(client: OpenAI) -> None:
    done = wait_for(client, create(client).id)
    assert done.status == "completed"
    answer = client.responses.with_raw_response.delete(done.id)
    assert answer.status_code == 200
    assert answer.http_response.json() == {"id": done.id, "object": "response.deleted", "deleted": True}
    assert answer.parse() is None  # what `client.responses.delete` returns
    assert_gone(client, done.id)


def test_delete_a_queued_or_in_flight_response_cancels_it(
    client: OpenAI, upstream: FakeUpstreamProcess
) -> None:
    queued = create(client, delay_ms=60_000)
    client.responses.delete(queued.id)
    assert_gone(client, queued.id)
    key = uuid.uuid4().hex
    running = create(client, delay_ms=60_000, key=key)
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while upstream.stats()["by_key"].get(key, 0) == 0:  # the request has reached the model server
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.responses.delete(running.id)
    assert_gone(client, running.id)
    assert wait_for(client, create(client).id).status == "completed"  # the engine goes on as before


def test_delete_an_unknown_or_another_projects_response(client: OpenAI, server: OvernightServer) -> None:
    assert_gone(client, "resp_0123456789abcdef0123456789abcdef")
    assert_gone(client, "not-a-response-id")
    created = create(client)
    other = make_client(server.base_url, "key-b")
    with pytest.raises(openai.NotFoundError, match=f"Response with id '{created.id}' not found."):
        other.responses.delete(created.id)
    assert wait_for(client, created.id).status == "completed"  # untouched


def stored_anywhere(data_dir: Path, suffix: str) -> list[str]:
    """Where the data folder still holds anything named by `suffix`: a blob, or a row of any table."""
    found = [str(path) for path in (data_dir / "blobs").rglob(f"*{suffix}*")]
    with sqlite3.connect(f"file:{data_dir / 'overnight.db'}?mode=ro", uri=True) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            found += [f"{table}: {row}" for row in db.execute(f"SELECT * FROM {table}") if suffix in str(row)]
    return found


def test_nothing_of_a_deleted_response_stays_stored(own_server: OvernightServer) -> None:
    client = make_client(own_server.base_url)
    done = wait_for(client, create(client).id)
    cancelled = create(client, delay_ms=60_000)
    assert client.responses.cancel(cancelled.id).status == "cancelled"
    kept = wait_for(client, create(client).id)
    for response_id in (done.id, cancelled.id):
        suffix = response_id.removeprefix("resp_")
        assert stored_anywhere(own_server.data_dir, suffix)  # what the check looks for is there at first
        client.responses.delete(response_id)
        assert stored_anywhere(own_server.data_dir, suffix) == []
    assert client.responses.retrieve(kept.id).model_dump() == kept.model_dump()


@pytest.fixture
def own_server(upstream: FakeUpstreamProcess, tmp_path: Path) -> Iterator[OvernightServer]:
    srv = OvernightServer(tmp_path / "data", write_config(tmp_path / "overnight.toml", upstream.base_url))
    srv.start()
    yield srv
    srv.stop()


def test_kill_9_while_queued_then_restart_completes(own_server: OvernightServer) -> None:
    client = make_client(own_server.base_url)
    created = create(client)
    own_server.kill()
    own_server.start()
    done = wait_for(client, created.id)
    assert (done.status, done.output_text) == ("completed", REPLY)


def test_kill_9_while_in_flight_then_restart_completes(
    own_server: OvernightServer, upstream: FakeUpstreamProcess
) -> None:
    client = make_client(own_server.base_url)
    key = uuid.uuid4().hex
    created = create(client, delay_ms=1000, key=key)
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while upstream.stats()["by_key"].get(key, 0) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    own_server.kill()
    own_server.start()
    done = wait_for(client, created.id)
    assert (done.status, done.output_text) == ("completed", REPLY)
    assert upstream.stats()["by_key"][key] >= 2  # it ran again after the restart
