"""Retrying what failed: `POST /v1/batches/{id}/retry` (Doubleword's route, what `dw batches retry`
calls, with no body) and `/retry-requests` make a new batch of an ended batch's failed, expired or
cancelled lines, linked by `metadata.retry_of`; on the real server, with the official SDK."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI
from openai.types import Batch

from acceptance.conftest import chat_line, error_shape, read_lines, upload, wait_for
from support.server import FakeUpstreamProcess, OvernightServer


def retry(client: OpenAI, batch_id: str, body: dict[str, Any] | None = None, **options: Any) -> Batch:
    path = f"/batches/{batch_id}/retry" if body is None or "request_ids" not in body else None
    path = path or f"/batches/{batch_id}/retry-requests"
    made: Batch = client.post(path, body=body, cast_to=Batch, **options)
    return made


def mixed_batch(client: OpenAI, tag: str) -> tuple[Batch, dict[str, str]]:
    """A finished batch of 12 lines: 3 refused for good (400), 3 that fail every attempt this batch
    makes (500) and succeed when sent again, 6 fine. Returns it and each line's kind."""
    kinds: dict[str, str] = {}
    lines = []
    knobs: dict[str, Any]
    for i in range(12):
        name = f"{tag}-{i:02d}"
        if i % 4 == 1:
            kinds[name], knobs = "refused", {"status": 400}
        elif i % 4 == 2:
            kinds[name], knobs = "flaky", {"fail_times": 3, "key": f"{tag}-{name}"}  # max_attempts is 3
        else:
            kinds[name], knobs = "ok", {}
        lines.append(chat_line(name, fake=knobs))
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "eval-7"},
    )
    done = wait_for(client, batch.id)
    assert done.request_counts is not None
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 6, 6)
    return done, kinds


def names_in(client: OpenAI, file_id: str) -> list[str]:
    text = client.files.content(file_id).content.decode()
    return [json.loads(line)["custom_id"] for line in text.splitlines()]


def test_retrying_the_5xx_lines_makes_a_new_batch_of_them(client: OpenAI) -> None:
    tag = uuid.uuid4().hex[:8]
    done, kinds = mixed_batch(client, tag)
    again = retry(client, done.id, {"status_codes": ["5xx"]})
    assert again.id != done.id
    assert again.metadata == {"project": "eval-7", "retry_of": done.id}
    assert (again.endpoint, again.completion_window) == (done.endpoint, done.completion_window)
    flaky = [name for name, kind in kinds.items() if kind == "flaky"]
    assert names_in(client, again.input_file_id) == flaky  # in input order, lines as they were sent
    finished = wait_for(client, again.id)
    assert finished.request_counts is not None
    assert (finished.status, finished.request_counts.completed) == ("completed", len(flaky))
    assert sorted(line["custom_id"] for line in read_lines(client, finished.output_file_id)) == flaky
    original = client.files.content(done.input_file_id).content.splitlines()
    assert client.files.content(again.input_file_id).content.splitlines() == [
        raw for raw in original if json.loads(raw)["custom_id"] in flaky
    ]


def test_dw_batches_retry_with_no_body_retries_every_failed_line(
    server: OvernightServer, client: OpenAI
) -> None:
    done, kinds = mixed_batch(client, uuid.uuid4().hex[:8])
    with httpx2.Client(timeout=30) as http:  # what `dw batches retry` sends: a POST without a body
        answer = http.post(
            f"{server.base_url}/batches/{done.id}/retry", headers={"Authorization": "Bearer test-key"}
        )
    assert answer.status_code == 200, answer.text
    again = Batch.model_validate(answer.json())
    assert again.metadata is not None
    assert again.metadata["retry_of"] == done.id
    failed = [name for name, kind in kinds.items() if kind != "ok"]
    assert names_in(client, again.input_file_id) == failed


def test_retry_requests_takes_the_error_lines_ids(client: OpenAI) -> None:
    done, _ = mixed_batch(client, uuid.uuid4().hex[:8])
    errors = read_lines(client, done.error_file_id)
    chosen = [line for line in errors if line["response"]["status_code"] == 400][:2]
    again = retry(client, done.id, {"request_ids": [line["id"] for line in chosen]})
    assert names_in(client, again.input_file_id) == [line["custom_id"] for line in chosen]
    by_code = retry(client, done.id, {"error_codes": ["fake_400"]})
    assert len(names_in(client, by_code.input_file_id)) == 3


def test_expired_lines_are_retried_by_their_code(client: OpenAI, upstream: FakeUpstreamProcess) -> None:
    lines = [chat_line(f"exp-{i}", fake={"hold": True}) for i in range(5)]
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="2s",  # type: ignore[arg-type]
    )
    try:
        expired = wait_for(client, batch.id)
    finally:
        upstream.control(release=-1)
    assert expired.status == "expired"
    again = retry(client, expired.id, {"error_codes": ["batch_expired"]})
    assert sorted(names_in(client, again.input_file_id)) == [f"exp-{i}" for i in range(5)]
    assert again.completion_window == "2s"
    client.batches.cancel(again.id)


def test_what_cannot_be_retried_is_refused_in_openais_shape(server: OvernightServer, client: OpenAI) -> None:
    fine = wait_for(
        client,
        client.batches.create(
            input_file_id=upload(client, [chat_line("fine-1")]).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        ).id,
    )
    done, _ = mixed_batch(client, uuid.uuid4().hex[:8])
    with httpx2.Client(timeout=30, headers={"Authorization": "Bearer test-key"}) as http:

        def refused(batch_id: str, body: Any, status: int) -> dict[str, Any]:
            answer = http.post(f"{server.base_url}/batches/{batch_id}/retry", json=body)
            return error_shape(answer, status)

        assert refused(fine.id, {}, 400)["code"] == "nothing_to_retry"
        assert refused(done.id, {"status_codes": [418]}, 400)["code"] == "nothing_to_retry"
        assert refused(done.id, {"status_codes": ["9xx"]}, 400)["param"] == "status_codes"
        assert refused("batch_nope", {}, 404)["param"] == "id"
        held = upload(client, [chat_line("slow", fake={"delay_ms": 3000})])
        running = client.batches.create(
            input_file_id=held.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert refused(running.id, {}, 400)["code"] == "batch_not_ended"
        client.batches.cancel(running.id)
        empty = http.post(f"{server.base_url}/batches/{done.id}/retry-requests", json={"request_ids": []})
        assert error_shape(empty, 400)["param"] == "request_ids"
    client.files.delete(done.input_file_id)
    with pytest.raises(openai.NotFoundError) as gone:
        retry(client, done.id)
    assert gone.value.code == "input_file_gone"


def test_a_retry_with_an_idempotency_key_is_made_once(client: OpenAI) -> None:
    done, _ = mixed_batch(client, uuid.uuid4().hex[:8])
    key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    first = retry(client, done.id, {"status_codes": [400]}, options={"headers": key})
    second = retry(client, done.id, {"status_codes": [400]}, options={"headers": key})
    assert second.id == first.id
    with pytest.raises(openai.UnprocessableEntityError) as reused:
        retry(client, done.id, {"status_codes": [500]}, options={"headers": key})
    assert reused.value.code == "idempotency_key_reused"
