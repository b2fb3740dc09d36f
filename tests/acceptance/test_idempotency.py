"""Idempotency-Key on POST /v1/files and POST /v1/batches, on the real server with the official SDK:
the same key with the same request gives the same object, with another request a 422; keys are a
project's; two API servers racing on one key (PostgreSQL) make one object."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, jsonl, make_client, upload, wait_for, write_config
from support.server import FakeUpstreamProcess, OvernightServer


def key_header(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def create_batch(client: OpenAI, file_id: str, key: str, **extra: Any) -> Any:
    return client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers=key_header(key),
        **extra,
    )


def upload_keyed(client: OpenAI, content: bytes, key: str, name: str = "in.jsonl") -> Any:
    return client.files.create(file=(name, content), purpose="batch", extra_headers=key_header(key))


@pytest.fixture(scope="module")
def two_projects(upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("idempotency")
    config = write_config(root / "overnight.toml", upstream.base_url, api_keys={"key-a": "a", "key-b": "b"})
    server = OvernightServer(root / "data", config)
    server.start()
    yield server.base_url
    server.stop()


def test_an_upload_sent_again_with_its_key_is_the_same_file(client: OpenAI) -> None:
    key = f"up-{uuid.uuid4().hex}"
    content = jsonl([chat_line("i1"), chat_line("i2")])
    first = upload_keyed(client, content, key)
    again = upload_keyed(client, content, key)
    assert again == first
    listed = [file.id for file in client.files.list(purpose="batch") if file.filename == "in.jsonl"]
    assert listed.count(first.id) == 1
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        upload_keyed(client, jsonl([chat_line("other")]), key)
    assert reused.value.code == "idempotency_key_reused"
    with pytest.raises(openai.UnprocessableEntityError):
        upload_keyed(client, content, key, name="renamed.jsonl")  # another field is another request
    client.files.delete(first.id)
    with pytest.raises(openai.NotFoundError):  # the key's file, as it is now: deleted
        upload_keyed(client, content, key)


def test_a_batch_created_again_with_its_key_is_the_same_batch(client: OpenAI) -> None:
    file = upload(client, [chat_line("b1")])
    key = f"batch-{uuid.uuid4().hex}"
    first = create_batch(client, file.id, key, metadata={"run": "1"})
    again = create_batch(client, file.id, key, metadata={"run": "1"})
    assert again.id == first.id
    assert [batch.id for batch in client.batches.list(limit=100) if batch.input_file_id == file.id] == [
        first.id
    ]
    done = wait_for(client, first.id)
    assert create_batch(client, file.id, key, metadata={"run": "1"}).status == done.status  # as it is now
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        create_batch(client, file.id, key, metadata={"run": "2"})
    assert reused.value.code == "idempotency_key_reused"
    with pytest.raises(openai.UnprocessableEntityError):  # a key of a batch is not a key of an upload
        upload_keyed(client, jsonl([chat_line("b1")]), key)


def test_a_refused_request_leaves_its_key_free(client: OpenAI) -> None:
    key = f"refused-{uuid.uuid4().hex}"
    with pytest.raises(openai.NotFoundError):
        create_batch(client, "file-missing", key)
    file = upload(client, [chat_line("r1")])
    assert create_batch(client, file.id, key).input_file_id == file.id
    for bad in ("", "x" * 256):
        with pytest.raises(openai.BadRequestError) as refused:
            create_batch(client, file.id, bad)
        assert refused.value.code == "invalid_idempotency_key"


def test_keys_belong_to_a_project(two_projects: str) -> None:
    a, b = make_client(two_projects, "key-a"), make_client(two_projects, "key-b")
    key = f"shared-{uuid.uuid4().hex}"
    content = jsonl([chat_line("p1")])
    file_a, file_b = upload_keyed(a, content, key), upload_keyed(b, content, key)
    assert file_a.id != file_b.id
    assert create_batch(a, file_a.id, "k").id != create_batch(b, file_b.id, "k").id


def test_two_api_servers_racing_on_one_key_make_one_object(
    upstream: FakeUpstreamProcess, tmp_path: Path, database_url: str
) -> None:
    """Two servers on one PostgreSQL database (and one blob folder), many requests with one key at once:
    one upload and one batch, every answer naming them."""
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    env = {"OVERNIGHT_DATABASE_URL": database_url}
    servers = [OvernightServer(tmp_path / "data", config, env=env) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        clients = [make_client(server.base_url) for server in servers]
        content = jsonl([chat_line(f"race-{i}") for i in range(50)])
        key = f"race-{uuid.uuid4().hex}"
        with ThreadPoolExecutor(8) as pool:
            files = list(pool.map(lambda n: upload_keyed(clients[n % 2], content, key).id, range(8)))
            assert len(set(files)) == 1
            batches = list(
                pool.map(lambda n: create_batch(clients[n % 2], files[0], f"{key}-b").id, range(8))
            )
        assert len(set(batches)) == 1
        listed = [batch.id for batch in clients[0].batches.list(limit=100)]
        assert listed == batches[:1]
        assert [file.id for file in clients[1].files.list(purpose="batch")] == files[:1]
        assert wait_for(clients[1], batches[0]).status == "completed"
    finally:
        for server in servers:
            server.stop()
