"""The Files API through the real server: the official SDK in strict mode, raw HTTP where it cannot go."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai import APIStatusError, BadRequestError, NotFoundError, OpenAI

from acceptance.conftest import (
    TERMINAL,
    chat_line,
    error_shape,
    make_client,
    read_lines,
    upload,
    wait_for,
    write_config,
)
from support.server import FakeUpstreamProcess, OvernightServer

THIRTY_DAYS = 2_592_000
BATCH_INPUT_LIMIT = 209_715_200
UPLOAD_PURPOSES = ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]


def _root(server: OvernightServer) -> str:
    return server.base_url.removesuffix("/v1")


def _error_body(exc: APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)
    assert set(body) >= {"message", "type", "param", "code"}
    return body


def _blob_sizes(server: OvernightServer) -> dict[str, int]:
    root = server.data_dir / "blobs"
    if not root.exists():
        return {}
    return {str(path.relative_to(root)): path.stat().st_size for path in root.rglob("*") if path.is_file()}


def _input_blob(server: OvernightServer, file_id: str) -> Path:
    return server.data_dir / "blobs" / "files" / file_id


# -- upload -------------------------------------------------------------------------------------


def test_batch_upload_is_processed_and_expires_in_thirty_days(client: OpenAI) -> None:
    content = b'{"custom_id": "a"}\n'
    file = client.files.create(file=("requests.jsonl", content), purpose="batch")
    assert file.id.startswith("file-")
    assert file.object == "file"
    assert file.status == "processed"
    assert file.purpose == "batch"
    assert file.bytes == len(content)
    assert file.filename == "requests.jsonl"
    assert file.expires_at == file.created_at + THIRTY_DAYS
    assert file.status_details is None
    assert client.files.retrieve(file.id) == file


def test_raw_bytes_upload_is_named_upload(client: OpenAI) -> None:
    file = client.files.create(file=b"Example data", purpose="user_data")
    assert file.filename == "upload"
    assert file.bytes == len(b"Example data")


def test_user_data_without_expires_after_never_expires(client: OpenAI) -> None:
    file = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    assert file.expires_at is None


@pytest.mark.parametrize(
    ("purpose", "seconds"), [("user_data", 3600), ("batch", 7200), ("vision", THIRTY_DAYS)]
)
def test_expires_after_is_honoured(client: OpenAI, purpose: str, seconds: int) -> None:
    name = "in.jsonl" if purpose == "batch" else "in.bin"
    file = client.files.create(
        file=(name, b"{}\n"),
        purpose=purpose,  # type: ignore[arg-type]
        expires_after={"anchor": "created_at", "seconds": seconds},
    )
    assert file.expires_at == file.created_at + seconds
    assert client.files.retrieve(file.id).expires_at == file.expires_at


@pytest.mark.parametrize("seconds", [0, 3599, THIRTY_DAYS + 1])
def test_expires_after_out_of_range_is_refused(client: OpenAI, seconds: int) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.files.create(
            file=("x.jsonl", b"{}\n"),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": seconds},
        )
    assert caught.value.status_code == 400
    assert _error_body(caught.value)["param"] == "expires_after.seconds"


def test_expires_after_unknown_anchor_is_refused(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.files.create(
            file=("x.jsonl", b"{}\n"),
            purpose="batch",
            expires_after={"anchor": "last_used_at", "seconds": 3600},  # type: ignore[arg-type]
        )
    assert _error_body(caught.value)["param"] == "expires_after.anchor"


@pytest.mark.parametrize("purpose", UPLOAD_PURPOSES)
def test_every_upload_purpose_is_accepted(client: OpenAI, purpose: str) -> None:
    name = "data.jsonl" if purpose in ("batch", "fine-tune", "evals") else "data.bin"
    raw = client.files.with_raw_response.create(file=(name, b'{"x": 1}\n'), purpose=purpose)  # type: ignore[arg-type]
    body = raw.http_response.json()
    assert raw.http_response.status_code == 200
    # `evals` is not in OpenAI's File schema (a strict SDK would refuse it): it is shown as user_data.
    shown = "user_data" if purpose == "evals" else purpose
    assert body["purpose"] == shown
    assert body["status"] == "processed"
    assert body["object"] == "file"
    assert raw.parse().purpose == shown
    if purpose == "evals":  # still an evals file underneath: the purpose filter finds it
        assert body["id"] in [f.id for f in client.files.list(purpose="evals")]
        assert len(list(client.files.list())) >= 1  # every listing still parses strictly
    assert client.files.delete(body["id"]).deleted is True


@pytest.mark.parametrize("purpose", ["batch_output", "assistants_output", "fine-tune-results", "nonsense"])
def test_unsupported_upload_purpose_is_refused(client: OpenAI, purpose: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose=purpose)  # type: ignore[arg-type]
    body = _error_body(caught.value)
    assert body["param"] == "purpose"
    assert body["type"] == "invalid_request_error"


def test_batch_upload_must_be_jsonl(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.files.create(file=("notes.txt", b'{"custom_id": "a"}\n'), purpose="batch")
    body = _error_body(caught.value)
    assert body["message"] == "Invalid file format for Batch API. Must be .jsonl"
    assert body["param"] is None
    assert body["code"] is None
    assert all(f.filename != "notes.txt" for f in client.files.list(purpose="batch"))


def test_malformed_uploads_are_refused_with_openai_errors(server: OvernightServer) -> None:
    headers = {"Authorization": "Bearer test-key"}
    url = f"{server.base_url}/files"
    with httpx2.Client(timeout=30) as http:
        not_multipart = http.post(url, headers=headers, json={"purpose": "batch"})
        error_shape(not_multipart, 400)
        no_file = http.post(url, headers=headers, files={"purpose": (None, "batch")})
        assert error_shape(no_file, 400)["param"] == "file"
        no_purpose = http.post(url, headers=headers, files={"file": ("a.jsonl", b"{}\n")})
        assert error_shape(no_purpose, 400)["param"] == "purpose"


def _stored_ids(server: OvernightServer) -> set[str]:
    folder = server.data_dir / "blobs" / "files"
    return {path.name for path in folder.iterdir()} if folder.exists() else set()


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(  # a text field past 64 KiB after the content was stored
            [
                ("file", ("a.jsonl", b'{"x": 1}\n')),
                ("purpose", (None, "batch")),
                ("notes", (None, "n" * 70_000)),
            ],
            id="long-field-after-the-file",
        ),
        pytest.param(  # a second file part, read as a text field and far too long
            [
                ("purpose", (None, "batch")),
                ("file", ("a.jsonl", b"{}\n")),
                ("file", ("b.jsonl", b"x" * 70_000)),
            ],
            id="second-file-part",
        ),
        pytest.param(
            [("purpose", (None, "nonsense")), ("file", ("a.jsonl", b"{}\n"))],
            id="bad-purpose",
        ),
    ],
)
def test_a_refused_upload_keeps_no_content(server: OvernightServer, files: list[tuple[str, Any]]) -> None:
    before = _stored_ids(server)
    with httpx2.Client(timeout=30) as http:
        answer = http.post(
            f"{server.base_url}/files", headers={"Authorization": "Bearer test-key"}, files=files
        )
    error_shape(answer, 400)
    assert _stored_ids(server) - before == set()


def test_oversized_batch_input_is_refused_and_not_kept(
    client: OpenAI, server: OvernightServer, tmp_path: Path
) -> None:
    path = tmp_path / "too-big.jsonl"
    with path.open("wb") as handle:
        handle.truncate(BATCH_INPUT_LIMIT + 1)  # sparse: costs no disk here
    with pytest.raises(APIStatusError) as caught:  # 413: no class of its own (docs/limits.md)
        client.files.create(file=path, purpose="batch")
    assert caught.value.status_code == 413
    body = _error_body(caught.value)
    assert body["type"] == "invalid_request_error"
    assert body["code"] == "file_too_large"
    assert str(BATCH_INPUT_LIMIT) in body["message"]
    assert caught.value.request_id
    assert all(f.filename != "too-big.jsonl" for f in client.files.list())
    assert all(size < BATCH_INPUT_LIMIT for size in _blob_sizes(server).values())


# -- retrieve / delete / content ----------------------------------------------------------------


def test_delete_then_retrieve_and_delete_again_are_404(client: OpenAI) -> None:
    file = upload(client, [chat_line("d")])
    deleted = client.files.delete(file.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (file.id, "file", True)
    with pytest.raises(NotFoundError):
        client.files.retrieve(file.id)
    with pytest.raises(NotFoundError):
        client.files.delete(file.id)
    with pytest.raises(NotFoundError):
        client.files.content(file.id)
    assert file.id not in {f.id for f in client.files.list()}


@pytest.mark.parametrize(
    "content",
    [
        b'{"a": 1}\r\n{"b": "\xc3\xa9"}\n\n   \n{"no": "trailing newline"}',
        b"\x00\xff\xfe binary \x80\x81 not utf-8\n",
        b"",
    ],
)
def test_batch_content_round_trips_exactly(client: OpenAI, content: bytes) -> None:
    file = client.files.create(file=("exact.jsonl", content), purpose="batch")
    assert file.bytes == len(content)
    assert client.files.content(file.id).content == content


def test_large_content_round_trips_exactly(client: OpenAI) -> None:
    content = os.urandom(5 * 1024 * 1024 + 7)  # over the server's 4 MiB body limit for other requests
    file = client.files.create(file=("big.bin", content), purpose="vision")
    assert file.bytes == len(content)
    assert client.files.content(file.id).content == content
    client.files.delete(file.id)


@pytest.mark.parametrize("purpose", ["assistants", "user_data"])
def test_content_of_private_purposes_is_refused(client: OpenAI, purpose: str) -> None:
    file = client.files.create(file=("secret.txt", b"secret"), purpose=purpose)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError) as caught:
        client.files.content(file.id)
    assert _error_body(caught.value)["message"] == f"Not allowed to download files of purpose: {purpose}"


def test_unknown_file_id_is_404_everywhere(client: OpenAI) -> None:
    missing = "file-doesnotexist"
    calls = [client.files.retrieve, client.files.content, client.files.delete]
    for call in calls:
        with pytest.raises(NotFoundError) as caught:
            call(missing)
        body = _error_body(caught.value)
        assert body["message"] == f"No such File object: {missing}"
        assert body["param"] == "id"
        assert body["type"] == "invalid_request_error"


# -- listing: a server of its own so counts are exact --------------------------------------------


@pytest.fixture(scope="module")
def listing(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OpenAI, list[str], list[str]]]:
    """A fresh server with 15 batch and 10 user_data files, interleaved; ids in upload order."""
    root = tmp_path_factory.mktemp("files-listing")
    srv = OvernightServer(root / "data", write_config(root / "overnight.toml", upstream.base_url))
    srv.start()
    try:
        sdk = make_client(srv.base_url)
        batch_ids: list[str] = []
        all_ids: list[str] = []
        for i in range(25):
            if i % 5 in (1, 3):
                file = sdk.files.create(file=(f"u{i}.txt", b"x"), purpose="user_data")
            else:
                file = sdk.files.create(file=(f"b{i}.jsonl", b"{}\n"), purpose="batch")
                batch_ids.append(file.id)
            all_ids.append(file.id)
        yield sdk, batch_ids, all_ids
    finally:
        srv.stop()


def test_list_defaults_to_newest_first(listing: tuple[OpenAI, list[str], list[str]]) -> None:
    sdk, _, all_ids = listing
    page = sdk.files.list()
    assert [f.id for f in page.data] == all_ids[::-1]
    assert page.has_more is False
    created = [f.created_at for f in page.data]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("limit", [1, 4, 7, 25])
def test_auto_pagination_walks_every_file_once(
    listing: tuple[OpenAI, list[str], list[str]], order: str, limit: int
) -> None:
    sdk, batch_ids, all_ids = listing
    expected_all = all_ids if order == "asc" else all_ids[::-1]
    expected_batch = batch_ids if order == "asc" else batch_ids[::-1]
    walked = [f.id for f in sdk.files.list(limit=limit, order=order)]  # type: ignore[arg-type]
    assert walked == expected_all
    walked_batch = [f.id for f in sdk.files.list(purpose="batch", limit=limit, order=order)]  # type: ignore[arg-type]
    assert walked_batch == expected_batch
    user_data = [f for f in sdk.files.list(purpose="user_data", limit=limit, order=order)]  # type: ignore[arg-type]
    assert len(user_data) == 10
    assert all(f.purpose == "user_data" for f in user_data)


def test_list_envelope_has_real_booleans_and_cursors(listing: tuple[OpenAI, list[str], list[str]]) -> None:
    sdk, _, all_ids = listing
    raw = sdk.files.with_raw_response.list(limit=10, order="asc")
    first = raw.http_response.json()
    assert first["object"] == "list"
    assert first["has_more"] is True
    assert [f["id"] for f in first["data"]] == all_ids[:10]
    assert (first["first_id"], first["last_id"]) == (all_ids[0], all_ids[9])

    last = sdk.files.with_raw_response.list(limit=10, order="asc", after=all_ids[19]).http_response.json()
    assert [f["id"] for f in last["data"]] == all_ids[20:]
    assert last["has_more"] is False

    exact = sdk.files.with_raw_response.list(limit=25).http_response.json()
    assert len(exact["data"]) == 25
    assert exact["has_more"] is False

    past_end = sdk.files.list(after=all_ids[-1], order="asc")
    assert past_end.data == []
    assert past_end.has_more is False


@pytest.mark.parametrize("limit", [0, -1, 10_001])
def test_list_limit_out_of_range_is_refused(client: OpenAI, limit: int) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.files.list(limit=limit)
    assert _error_body(caught.value)["param"] == "limit"


def test_list_bad_order_is_refused(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.files.list(order="sideways")  # type: ignore[arg-type]
    assert _error_body(caught.value)["param"] == "order"


# -- headers and routing ------------------------------------------------------------------------


def test_every_response_carries_a_request_id(client: OpenAI, server: OvernightServer) -> None:
    listed = client.files.with_raw_response.list()
    assert listed.headers["x-request-id"].startswith("req_")
    file = client.files.create(file=("ids.jsonl", b"{}\n"), purpose="batch")
    streamed = client.files.with_raw_response.content(file.id)
    assert streamed.headers["x-request-id"].startswith("req_")
    assert streamed.headers["x-request-id"] != listed.headers["x-request-id"]
    with pytest.raises(NotFoundError) as caught:
        client.files.retrieve("file-nope")
    assert caught.value.request_id
    with httpx2.Client(timeout=30) as http:
        missing = http.get(f"{server.base_url}/files/file-nope", headers={"Authorization": "Bearer k"})
        error_shape(missing, 404)
        health = http.get(f"{_root(server)}/health")
        assert health.status_code == 200
        assert health.headers.get("x-request-id")


def test_unknown_route_is_a_json_404(server: OvernightServer) -> None:
    with httpx2.Client(timeout=30) as http:
        headers = {"Authorization": "Bearer k"}
        for url in (
            f"{server.base_url}/nothing-here",
            f"{_root(server)}/v2/files",
            f"{server.base_url}/files/a/b/c",
        ):
            error_shape(http.get(url, headers=headers), 404)
        wrong_method = http.put(f"{server.base_url}/files", headers=headers)
        assert wrong_method.status_code in (404, 405)
        error_shape(wrong_method, wrong_method.status_code)


# -- deleting a running batch's input ------------------------------------------------------------


def test_deleting_a_running_batch_input_does_not_break_it(client: OpenAI, server: OvernightServer) -> None:
    lines = [chat_line(f"line-{i}") for i in range(8)]
    # Upstream delays keep the batch running while its input goes; if a slow machine lets the batch finish
    # before the delete lands, try again with longer delays (no timing is asserted either way).
    for delay_ms in (300, 1500, 6000):
        for line in lines[:3]:
            line["body"]["fake"] = {"delay_ms": delay_ms}
        file = upload(client, lines)
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert client.files.delete(file.id).deleted is True
        running_after_delete = client.batches.retrieve(batch.id).status not in TERMINAL
        if running_after_delete:
            break
        wait_for(client, batch.id)
    assert running_after_delete, "the batch always finished before its input could be deleted"

    with pytest.raises(NotFoundError):
        client.files.retrieve(file.id)
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.input_file_id == file.id
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (8, 8, 0)
    assert sorted(line["custom_id"] for line in read_lines(client, done.output_file_id)) == sorted(
        line["custom_id"] for line in lines
    )
    assert done.error_file_id is None
    # With the batch over, nothing holds the deleted input's content any more.
    deadline = time.monotonic() + 60
    while _input_blob(server, file.id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _input_blob(server, file.id).exists()


def test_batch_from_a_deleted_file_is_404(client: OpenAI) -> None:
    file = upload(client, [chat_line("gone")])
    client.files.delete(file.id)
    with pytest.raises(NotFoundError):
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
