"""Fixtures that start the real `overnight serve` and a fake model server, both as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai import OpenAI
from openai.types import Batch, FileObject

from support import postgres
from support.server import FakeUpstreamProcess, OvernightServer

FAKE_MODELS = ["fake-*", "gpt-*", "text-embedding-*", "omni-moderation-*"]
WAIT_TIMEOUT_S = 120.0
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON scalars and lists of strings are valid TOML


def write_config(
    path: Path, upstream_url: str, *, api_keys: dict[str, str] | None = None, **extra: Any
) -> Path:
    """A TOML config with one backend at the fake upstream and test-friendly timings."""
    settings: dict[str, Any] = {
        "worker_poll_interval_s": 0.1,
        "result_flush_interval_s": 0.02,
        "retry_base_delay_s": 0.01,
        "retry_max_delay_s": 0.05,
        "max_attempts": 3,
        "request_timeout_s": 30,
        "completion_windows": ["24h", "2s"],
        "file_sweep_interval_s": 0.2,
        **extra,
    }
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for key, project in (api_keys or {}).items():
        lines += ["[[api_keys]]", f"key = {_toml_value(key)}", f"project = {_toml_value(project)}"]
    lines += [
        "[[backends]]",
        'name = "fake"',
        f"base_url = {_toml_value(upstream_url)}",
        f"models = {_toml_value(FAKE_MODELS)}",
        "max_concurrency = 16",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstreamProcess]:
    fake = FakeUpstreamProcess()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("overnight")
    config = write_config(root / "overnight.toml", upstream.base_url)
    srv = OvernightServer(root / "data", config)
    srv.start()
    yield srv
    srv.stop()


def make_client(base_url: str, api_key: str = "test-key") -> OpenAI:
    return OpenAI(base_url=base_url, api_key=api_key, _strict_response_validation=True, max_retries=0)


@pytest.fixture
def client(server: OvernightServer) -> OpenAI:
    return make_client(server.base_url)


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, model: str = "fake-chat", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"hello {custom_id}"}], **body},
    }


def upload(client: OpenAI, lines: list[dict[str, Any]] | bytes, name: str = "input.jsonl") -> FileObject:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    return client.files.create(file=(name, content), purpose="batch")


def wait_for(
    client: OpenAI,
    batch_id: str,
    done: Callable[[Batch], bool] = lambda b: b.status in TERMINAL,
    timeout: float = WAIT_TIMEOUT_S,
) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.status} after {timeout} s")
        time.sleep(0.05)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).content.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_batch(client: OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> Batch:
    file = upload(client, lines)
    batch = client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    return wait_for(client, batch.id)


def error_shape(response: httpx2.Response, status: int) -> dict[str, Any]:
    """The `error` object of a raw error response, checked against OpenAI's shape."""
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    payload = response.json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    return error


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (`overnight migrate` or the first server builds the schema),
    dropped afterwards; its URL."""
    found = postgres.server()
    name = asyncio.run(found.create_database())
    try:
        yield found.dsn(name)
    finally:
        asyncio.run(found.drop_database(name))


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, for one test."""
    with scratch_database() as url:
        yield url
