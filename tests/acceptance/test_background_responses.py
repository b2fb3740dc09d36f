"""Background responses (docs/background.md) through the real server and the official SDK in strict mode:
create, poll to the end, cancel, an upstream failure passed through, another project's id, and kill -9
while one is queued or in flight."""

from __future__ import annotations

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
