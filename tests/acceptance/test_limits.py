"""The limits of docs/limits.md against the real server, driven by the openai SDK and raw HTTP: uploads
cut off as they stream, request bodies on every endpoint, storage quotas and the batch creation rate,
each refused in OpenAI's shape with the status and `x-should-retry` the SDK acts on rightly."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, error_shape, jsonl, upload, wait_for, write_config
from overnight.domain.models import Batch, BatchStatus
from overnight.store.sqlite import SqliteStore
from support.server import FakeUpstreamProcess, OvernightServer

MiB = 1024 * 1024
MAX_BODY = 64 * 1024
MAX_UPLOAD = 8 * MiB
MAX_BATCH_UPLOAD = 4 * MiB
QUOTA = 3000
KEYS = {"key-a": "proj-a", "key-q": "proj-q", "key-r": "proj-r", "key-r2": "proj-r2"}
BOUNDARY = "limitsboundary"


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("limits")
    config = write_config(
        root / "overnight.toml",
        upstream.base_url,
        api_keys=KEYS,
        max_body_bytes=MAX_BODY,
        max_upload_bytes=MAX_UPLOAD,
        max_batch_upload_bytes=MAX_BATCH_UPLOAD,
        sync_max_body_bytes=MAX_BODY * 2,
        batch_create_rate_per_hour=1,
    )
    with config.open("a") as handle:  # tables go last in TOML
        handle.write(f'[storage_quotas]\n"proj-q" = {QUOTA}\n')
    srv = OvernightServer(root / "data", config)
    srv.start()
    yield srv
    srv.stop()


class Counted:
    """An SDK client with its retries on, counting the HTTP requests it sends."""

    def __init__(self, server: OvernightServer, key: str) -> None:
        self.requests = 0
        self.http = httpx2.Client(event_hooks={"request": [self._count]}, timeout=120)
        self.client = OpenAI(base_url=server.base_url, api_key=key, http_client=self.http, max_retries=2)

    def _count(self, request: httpx2.Request) -> None:
        self.requests += 1


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _leftovers(data_dir: Path) -> list[Path]:
    """Content files in the data folder: blobs and unfinished writes (the database aside)."""
    return [
        p for p in data_dir.rglob("*") if (p.is_file() and "blobs" in p.parts) or p.name.startswith(".tmp-")
    ]


def _form_stream(total: int, produced: list[int], purpose: str = "batch") -> Iterator[bytes]:
    """A multipart form whose file has `total` bytes, made as it is sent; `produced` counts them."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield head
    chunk = b"x" * MiB
    sent = 0
    while sent < total:
        piece = chunk[: min(MiB, total - sent)]
        sent += len(piece)
        produced[0] += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _post_form(server: OvernightServer, body: Iterator[bytes], headers: dict[str, str] | None = None) -> Any:
    all_headers = {
        "Authorization": "Bearer key-a",
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        **(headers or {}),
    }
    return httpx2.post(f"{server.base_url}/files", content=body, headers=all_headers, timeout=120)


# -- uploads ---------------------------------------------------------------------------------------


def test_a_2_gb_upload_is_cut_off_at_the_limit_without_filling_disk_or_memory(
    server: OvernightServer,
) -> None:
    assert server.process is not None
    before = _rss_bytes(server.process.pid)
    produced = [0]
    response = _post_form(server, _form_stream(2 * 1024 * MiB, produced))  # chunked: no size said
    error = error_shape(response, 413)
    assert error["code"] == "file_too_large"
    assert error["param"] == "file"
    assert response.headers["x-should-retry"] == "false"
    # The server stopped reading near the limit: what the client got to send is the limit and the
    # sockets' buffers, nowhere near 2 GB.
    assert produced[0] < MAX_BATCH_UPLOAD + 256 * MiB
    assert _rss_bytes(server.process.pid) - before < 256 * MiB
    assert _leftovers(server.data_dir) == []
    assert httpx2.get(f"{server.base_url.removesuffix('/v1')}/health").status_code == 200


def test_an_upload_that_declares_too_many_bytes_is_refused_before_it_is_read(server: OvernightServer) -> None:
    produced = [0]
    total = 2 * 1024 * MiB
    declared = {"Content-Length": str(total + 400)}
    response = _post_form(server, _form_stream(total, produced), declared)
    assert error_shape(response, 413)["code"] == "file_too_large"
    assert produced[0] < 256 * MiB
    assert _leftovers(server.data_dir) == []


def test_the_sdk_gets_a_413_for_an_upload_past_the_limit_and_does_not_retry(server: OvernightServer) -> None:
    counted = Counted(server, "key-a")
    with pytest.raises(openai.APIStatusError) as refused:
        counted.client.files.create(file=("big.bin", b"y" * (MAX_UPLOAD + 1)), purpose="user_data")
    assert refused.value.status_code == 413
    assert type(refused.value) is openai.APIStatusError  # no class of its own for 413
    assert refused.value.code == "file_too_large"
    assert counted.requests == 1
    fits = counted.client.files.create(file=("ok.bin", b"y" * MAX_UPLOAD), purpose="user_data")
    assert fits.bytes == MAX_UPLOAD
    counted.client.files.delete(fits.id)


class Endless(io.RawIOBase):
    """A file of `size` bytes made as it is read (never on disk), of no known length."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = b"e" * n
        self.left -= n
        self.produced += n
        return n


def test_the_sdk_streaming_a_2_gb_file_gets_a_413_once(server: OvernightServer) -> None:
    counted = Counted(server, "key-a")
    source = Endless(2 * 1024 * MiB)
    with pytest.raises(openai.APIStatusError) as refused:
        counted.client.files.create(file=("huge.bin", io.BufferedReader(source)), purpose="user_data")
    assert refused.value.status_code == 413
    assert counted.requests == 1
    assert source.produced < MAX_UPLOAD + 256 * MiB
    assert _leftovers(server.data_dir) == []


def test_a_batch_file_has_its_own_smaller_limit(server: OvernightServer) -> None:
    counted = Counted(server, "key-a")
    with pytest.raises(openai.APIStatusError) as refused:
        counted.client.files.create(file=("in.jsonl", b"z" * (MAX_BATCH_UPLOAD + 1)), purpose="batch")
    assert refused.value.status_code == 413
    assert "max_batch_upload_bytes" in refused.value.message
    assert counted.requests == 1


# -- request bodies ---------------------------------------------------------------------------------


def _raw(server: OvernightServer, method: str, path: str, body: Any, key: str = "key-a") -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx2.request(method, f"{server.base_url}{path}", content=body, headers=headers, timeout=60)


BIG_JSON = b'{"input_file_id": "file-x", "metadata": {"k": "' + b"v" * (2 * MAX_BODY) + b'"}}'


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/batches"),
        ("POST", "/batches/batch_nope/retry"),
        ("POST", "/batches/batch_nope/retry-requests"),
        ("POST", "/batches/batch_nope/cancel"),
        ("GET", "/batches"),
        ("DELETE", "/files/file-nope"),
    ],
)
def test_every_endpoint_refuses_a_body_past_max_body_bytes(
    server: OvernightServer, method: str, path: str
) -> None:
    response = _raw(server, method, path, BIG_JSON)
    error = error_shape(response, 413)
    assert error["code"] == "request_too_large"
    assert "max_body_bytes" in error["message"]
    assert response.headers["x-should-retry"] == "false"


def test_a_body_without_a_size_is_refused_as_it_passes_the_limit(server: OvernightServer) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer encoding: no Content-Length
        yield BIG_JSON[: MAX_BODY // 2]
        yield BIG_JSON[MAX_BODY // 2 :]

    response = _raw(server, "POST", "/batches", chunks())
    assert "content-length" not in response.request.headers
    assert error_shape(response, 413)["code"] == "request_too_large"


def test_the_dashboard_sign_in_form_has_the_limit_too(server: OvernightServer) -> None:
    root = server.base_url.removesuffix("/v1")
    response = httpx2.post(
        f"{root}/ui/signin",
        content=b"key=" + b"k" * (2 * MAX_BODY),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert error_shape(response, 413)["code"] == "request_too_large"


def test_synchronous_endpoints_keep_their_own_limit(server: OvernightServer) -> None:
    body = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "' + b"w" * (3 * MAX_BODY)
    error = error_shape(_raw(server, "POST", "/chat/completions", body + b'"}]}'), 413)
    assert "sync_max_body_bytes" in error["message"]


def test_the_sdk_does_not_retry_a_413_body(server: OvernightServer) -> None:
    counted = Counted(server, "key-a")
    file = counted.client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    with pytest.raises(openai.APIStatusError) as refused:
        counted.client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"padding": "p" * (2 * MAX_BODY)},
        )
    assert refused.value.status_code == 413
    assert refused.value.code == "request_too_large"
    assert counted.requests == 2  # the upload, then the one refused create


# -- storage quota ----------------------------------------------------------------------------------


def test_uploads_past_the_projects_quota_are_refused_but_outputs_are_not(server: OvernightServer) -> None:
    counted = Counted(server, "key-q")
    client = counted.client
    lines = [chat_line(f"q{i}") for i in range(3)]
    first = upload(client, lines)
    free = QUOTA - first.bytes
    assert free > 0
    with pytest.raises(openai.BadRequestError) as refused:
        client.files.create(file=("more.bin", b"m" * (free + 1)), purpose="user_data")
    assert refused.value.code == "storage_quota_exceeded"
    assert refused.value.status_code == 400
    assert "storage quota of 3000 bytes" in refused.value.message
    requests = counted.requests
    filler = client.files.create(file=("fill.bin", b"m" * free), purpose="user_data")  # exactly full
    assert counted.requests == requests + 1  # the 400 was not retried either
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("one.bin", b"1"), purpose="user_data")
    # A batch may still finish: its output and error files take the project past its quota.
    batch = client.batches.create(
        input_file_id=first.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.output_file_id is not None
    assert client.files.retrieve(done.output_file_id).bytes > 0
    client.files.delete(filler.id)
    client.files.delete(done.output_file_id)
    assert client.files.create(file=("again.bin", b"a" * 10), purpose="user_data").bytes == 10


# -- batch creation rate ----------------------------------------------------------------------------


def _created_an_hour_ago(server: OvernightServer, project: str, age_s: int) -> None:
    """A batch of `project` created `age_s` seconds ago, as another API server sharing the store would
    have made it."""

    async def add() -> None:
        store = SqliteStore(server.data_dir / "overnight.db")
        await store.open()
        try:
            now = int(time.time())
            batch = Batch(
                f"batch_past{project.replace('-', '')}{now}",
                project,
                "/v1/chat/completions",
                "file-past",
                "24h",
                BatchStatus.FAILED,
                now - age_s,
                now - age_s + 86400,
            )
            await store.add_batch(batch)
        finally:
            await store.close()

    asyncio.run(add())


def _create(client: OpenAI) -> Callable[[], Any]:
    file = upload(client, [chat_line("r")])
    return lambda: client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def test_batch_creation_past_the_hourly_rate_is_a_429_the_sdk_waits_out(server: OvernightServer) -> None:
    counted = Counted(server, "key-r")
    create = _create(counted.client)
    _created_an_hour_ago(server, "proj-r", 3600 - 15)  # the hour's one batch, leaving it in 15 s
    before = counted.requests
    batch = create()  # 429 with retry-after of a few seconds, then the SDK's retry succeeds
    assert batch.status in ("validating", "in_progress", "completed", "failed")
    assert counted.requests - before == 2


def test_a_429_says_when_to_retry_and_the_sdk_gives_up_past_two_minutes(server: OvernightServer) -> None:
    counted = Counted(server, "key-r2")
    create = _create(counted.client)
    create()  # the hour's one batch
    before = counted.requests
    with pytest.raises(openai.RateLimitError) as refused:
        create()
    assert counted.requests - before == 1  # retry-after ~3600 s: past the SDK's 120 s, it does not wait
    headers = refused.value.response.headers
    assert headers["x-should-retry"] == "true"
    assert 3500 < int(headers["retry-after"]) <= 3600
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.body is not None
    assert refused.value.type == "rate_limit_error"
