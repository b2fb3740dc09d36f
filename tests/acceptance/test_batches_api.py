"""The /v1/batches endpoints (create, retrieve, list, cancel) through the official SDK in strict mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from acceptance.conftest import chat_line, make_client, run_batch, upload, wait_for, write_config
from support.server import FakeUpstreamProcess, OvernightServer

BATCH_KEYS = {
    "id",
    "object",
    "endpoint",
    "model",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "usage",
    "metadata",
}
TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)
USAGE_KEYS = {
    "input_tokens",
    "input_tokens_details",
    "output_tokens",
    "output_tokens_details",
    "total_tokens",
}
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def input_file_id(server: OvernightServer) -> str:
    """One valid batch input file, shared by the tests that only need something to point at."""
    return upload(make_client(server.base_url), [chat_line("only")]).id


def create(client: OpenAI, file_id: str, **params: Any) -> Batch:
    return client.batches.create(
        **{"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **params}
    )


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict)
    return exc.body


def failed_batch(client: OpenAI) -> Batch:
    file = upload(client, b"this is not json\n")
    batch = wait_for(client, create(client, file.id).id)
    assert batch.status == "failed"
    return batch


# -- create ----------------------------------------------------------------------------------------


def test_create_returns_a_validating_batch_with_every_field(client: OpenAI, input_file_id: str) -> None:
    metadata = {"project": "nightly", "owner": "qa"}
    raw = client.batches.with_raw_response.create(
        input_file_id=input_file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.headers.get("x-request-id")
    data: dict[str, Any] = json.loads(raw.text)
    assert set(data) == BATCH_KEYS
    assert data["object"] == "batch"
    assert data["id"].startswith("batch_")
    assert data["status"] == "validating"
    assert data["endpoint"] == "/v1/chat/completions"
    assert data["input_file_id"] == input_file_id
    assert data["completion_window"] == "24h"
    assert data["metadata"] == metadata
    assert data["errors"] is None
    assert data["output_file_id"] is None
    assert data["error_file_id"] is None
    for name in TIMESTAMPS:
        value = data[name]
        assert value is None or (isinstance(value, int) and not isinstance(value, bool)), name
    assert isinstance(data["created_at"], int)
    assert data["expires_at"] == data["created_at"] + 86400
    for name in TIMESTAMPS[3:]:
        assert data[name] is None, name
    assert data["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert set(data["usage"]) == USAGE_KEYS
    assert data["usage"]["input_tokens_details"] == {"cached_tokens": 0}
    assert data["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}
    assert all(isinstance(data["usage"][k], int) for k in ("input_tokens", "output_tokens", "total_tokens"))

    batch = raw.parse()  # strict validation against the SDK's Batch model
    assert batch.id == data["id"]
    assert batch.metadata == metadata
    retrieved = client.batches.retrieve(batch.id)
    assert retrieved.id == batch.id
    assert retrieved.created_at == batch.created_at
    assert retrieved.expires_at == batch.expires_at
    assert retrieved.metadata == metadata


def test_create_without_metadata_echoes_null(client: OpenAI, input_file_id: str) -> None:
    batch = create(client, input_file_id)
    assert batch.metadata is None
    assert batch.status == "validating"


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        pytest.param(
            {"endpoint": "/v1/invalid/endpoint"}, "endpoint", "invalid_value", id="unknown-endpoint"
        ),
        pytest.param({"completion_window": "1h"}, "completion_window", "invalid_value", id="window-1h"),
        pytest.param({"completion_window": ""}, "completion_window", "invalid_value", id="window-empty"),
        pytest.param(
            {"metadata": {"tags": ["a", "b"]}}, "metadata.tags", "invalid_type", id="metadata-array"
        ),
        pytest.param({"metadata": {"n": 3}}, "metadata.n", "invalid_type", id="metadata-int"),
        pytest.param({"metadata": ["a"]}, "metadata", "invalid_type", id="metadata-not-object"),
        pytest.param(
            {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", None, id="metadata-17-pairs"
        ),
        pytest.param({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 65, None, id="metadata-key-65"),
        pytest.param({"metadata": {"k": "v" * 513}}, "metadata.k", None, id="metadata-value-513"),
        pytest.param(
            {"output_expires_after": {"anchor": "created_at", "seconds": 3599}},
            "output_expires_after.seconds",
            "invalid_value",
            id="output-expiry-too-short",
        ),
        pytest.param(
            {"output_expires_after": {"anchor": "created_at", "seconds": 2_592_001}},
            "output_expires_after.seconds",
            "invalid_value",
            id="output-expiry-too-long",
        ),
        pytest.param(
            {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
            "output_expires_after",
            "invalid_value",
            id="output-expiry-bad-anchor",
        ),
    ],
)
def test_bad_create_params_are_a_400(
    client: OpenAI, input_file_id: str, params: dict[str, Any], param: str, code: str | None
) -> None:
    before = [b.id for b in client.batches.list(limit=100).data]
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input_file_id, **params)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    if code is not None:
        assert caught.value.code == code
    error = error_of(caught.value)
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert [b.id for b in client.batches.list(limit=100).data] == before  # nothing was created


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"metadata": {f"k{i}": "v" for i in range(16)}}, id="metadata-16-pairs"),
        pytest.param({"metadata": {"k" * 64: "v" * 512}}, id="metadata-max-lengths"),
        pytest.param({"metadata": {}}, id="metadata-empty"),
        pytest.param({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, id="expiry-min"),
        pytest.param(
            {"output_expires_after": {"anchor": "created_at", "seconds": 2_592_000}}, id="expiry-max"
        ),
        pytest.param({"completion_window": "2s"}, id="configured-window"),
    ],
)
def test_create_params_at_the_limits_are_accepted(
    client: OpenAI, input_file_id: str, params: dict[str, Any]
) -> None:
    batch = create(client, input_file_id, **params)
    assert batch.status == "validating"
    if "metadata" in params:
        assert batch.metadata == params["metadata"]
    if "completion_window" in params:
        assert batch.completion_window == "2s"
        assert batch.expires_at == batch.created_at + 2


@pytest.mark.parametrize("missing", ["input_file_id", "endpoint", "completion_window"])
def test_missing_required_create_param_is_a_400(client: OpenAI, input_file_id: str, missing: str) -> None:
    body = {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    del body[missing]
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/batches", cast_to=Batch, body=body)  # the typed create() cannot omit a param
    assert caught.value.param == missing
    assert caught.value.code == "missing_required_parameter"


def test_input_file_id_of_the_wrong_type_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, 42)  # type: ignore[arg-type]
    assert caught.value.param == "input_file_id"
    assert caught.value.code == "invalid_type"


def test_unknown_input_file_is_a_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, "file-doesnotexist")
    assert caught.value.status_code == 404
    assert "file-doesnotexist" in caught.value.message


def test_input_file_with_another_purpose_is_a_400(client: OpenAI) -> None:
    file = client.files.create(file=("data.jsonl", b'{"a": 1}\n'), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, file.id)
    assert caught.value.param == "input_file_id"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"this is {not json", "application/json", id="not-json"),
        pytest.param(b"", "application/json", id="empty"),
        pytest.param(b"[1, 2]", "application/json", id="array"),
        pytest.param(b'"a string"', "application/json", id="string"),
        pytest.param(b"\xff\xfe\x00", "application/octet-stream", id="binary"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400(
    server: OvernightServer, content: bytes, content_type: str
) -> None:
    response = httpx2.post(
        f"{server.base_url}/batches",
        content=content,
        headers={**AUTH, "Content-Type": content_type},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-should-retry") == "false"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str)
    assert error["message"]


# -- retrieve / cancel of unknown ids --------------------------------------------------------------


def test_retrieve_unknown_batch_is_a_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.batches.retrieve("batch_doesnotexist")
    assert "batch_doesnotexist" in caught.value.message
    assert error_of(caught.value)["type"] == "invalid_request_error"


def test_cancel_unknown_batch_is_a_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_doesnotexist")


# -- list ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    """A server of its own, so the number of batches it holds is exact."""
    root: Path = tmp_path_factory.mktemp("overnight-list")
    srv = OvernightServer(root / "data", write_config(root / "overnight.toml", upstream.base_url))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def listed_ids(fresh_server: OvernightServer) -> list[str]:
    """The ids of 25 batches on the fresh server, in creation order."""
    client = make_client(fresh_server.base_url)
    file = upload(client, [chat_line("one")])
    return [create(client, file.id, metadata={"n": str(i)}).id for i in range(25)]


def test_list_is_newest_first_and_auto_pagination_sees_each_batch_once(
    fresh_server: OvernightServer, listed_ids: list[str]
) -> None:
    requests: list[httpx2.Request] = []
    http = httpx2.Client(event_hooks={"request": [requests.append]}, timeout=30)
    client = OpenAI(
        base_url=fresh_server.base_url,
        api_key="test-key",
        _strict_response_validation=True,
        max_retries=0,
        http_client=http,
    )
    walked = [batch.id for batch in client.batches.list(limit=7)]
    assert walked == listed_ids[::-1]
    assert len(requests) == 4  # 7 + 7 + 7 + 4
    afters = [request.url.params.get("after") for request in requests]
    assert afters == [None, walked[6], walked[13], walked[20]]
    assert all(request.url.params.get("limit") == "7" for request in requests)


def test_list_has_more_is_real(fresh_server: OvernightServer, listed_ids: list[str]) -> None:
    client = make_client(fresh_server.base_url)
    page = client.batches.list(limit=5)
    pages = [page]
    while page.has_next_page():
        page = page.get_next_page()
        pages.append(page)
    assert [len(p.data) for p in pages] == [5, 5, 5, 5, 5]
    assert [p.has_more for p in pages] == [True, True, True, True, False]
    assert [b.id for p in pages for b in p.data] == listed_ids[::-1]

    everything = client.batches.list(limit=100)
    assert everything.has_more is False
    assert [b.id for b in everything.data] == listed_ids[::-1]

    default = client.batches.list()
    assert len(default.data) == 20
    assert default.has_more is True


def test_list_after_starts_after_that_batch(fresh_server: OvernightServer, listed_ids: list[str]) -> None:
    client = make_client(fresh_server.base_url)
    newest_first = listed_ids[::-1]
    page = client.batches.list(after=newest_first[9], limit=3)
    assert [b.id for b in page.data] == newest_first[10:13]
    assert page.has_more is True
    last = client.batches.list(after=newest_first[-1])
    assert last.data == []
    assert last.has_more is False


def test_list_envelope(fresh_server: OvernightServer, listed_ids: list[str]) -> None:
    response = httpx2.get(f"{fresh_server.base_url}/batches?limit=2", headers=AUTH, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["has_more"] is True
    assert [b["id"] for b in body["data"]] == listed_ids[::-1][:2]
    assert body["first_id"] == listed_ids[-1]
    assert body["last_id"] == listed_ids[-2]
    assert all(set(b) == BATCH_KEYS for b in body["data"])


@pytest.mark.parametrize("limit", [0, 101, -1])
def test_list_limit_out_of_range_is_a_400(client: OpenAI, limit: int) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.list(limit=limit)
    assert caught.value.param == "limit"


def test_list_limit_that_is_not_a_number_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.list(extra_query={"limit": "many"})
    assert caught.value.param == "limit"


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_of_a_completed_batch_is_a_409_that_is_not_retried(
    server: OvernightServer, client: OpenAI
) -> None:
    batch = run_batch(client, [chat_line("done")])
    assert batch.status == "completed"

    response = httpx2.post(f"{server.base_url}/batches/{batch.id}/cancel", headers=AUTH, timeout=30)
    assert response.status_code == 409
    assert response.headers.get("x-should-retry") == "false"
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "error": {
            "message": "Cannot cancel a batch with status 'completed'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }

    requests: list[httpx2.Request] = []
    http = httpx2.Client(event_hooks={"request": [requests.append]}, timeout=30)
    retrying = OpenAI(
        base_url=server.base_url,
        api_key="test-key",
        _strict_response_validation=True,
        max_retries=2,
        http_client=http,
    )
    with pytest.raises(openai.ConflictError) as caught:
        retrying.batches.cancel(batch.id)
    assert caught.value.status_code == 409
    assert len(requests) == 1
    assert client.batches.retrieve(batch.id).status == "completed"


def test_cancel_of_a_failed_batch_is_a_409(client: OpenAI) -> None:
    batch = failed_batch(client)
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.cancel(batch.id)
    assert "'failed'" in caught.value.message
    after = client.batches.retrieve(batch.id)
    assert after.status == "failed"
    assert after.cancelling_at is None


def test_cancel_twice_then_cancelled(client: OpenAI) -> None:
    lines = [chat_line(f"hang-{i}", fake={"hang": True}) for i in range(3)]
    file = upload(client, lines)
    batch = create(client, file.id)
    wait_for(client, batch.id, lambda b: b.status == "in_progress")

    first = client.batches.cancel(batch.id)
    assert first.id == batch.id
    assert first.status in ("cancelling", "cancelled")
    assert first.cancelling_at is not None

    second = client.batches.cancel(batch.id)
    assert second.status in ("cancelling", "cancelled")
    assert second.cancelling_at == first.cancelling_at

    final = wait_for(client, batch.id)
    assert final.status == "cancelled"
    assert final.cancelling_at is not None
    assert final.cancelled_at is not None
    assert final.created_at <= final.cancelling_at <= final.cancelled_at
    assert final.completed_at is None
    assert final.failed_at is None

    third = client.batches.cancel(batch.id)  # cancelling a cancelled batch is allowed
    assert third.status == "cancelled"
    assert third.cancelled_at == final.cancelled_at
