"""LocalBackend specifics (the shared Backend contract is in tests/contract/test_backend_contract.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from overnight.backends.local.backend import LocalBackend
from support.local_models import EchoChat

CHAT = "/v1/chat/completions"


class Exploding(EchoChat):
    name = "exploding"

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        raise RuntimeError("boom")


@pytest.fixture
async def local() -> AsyncIterator[LocalBackend]:
    backend = LocalBackend([EchoChat(), Exploding()], {"gpt-4o-mini": "echo-chat"})
    await backend.start()
    yield backend
    await backend.close()


def test_local_serves_model_names_and_aliases_only() -> None:
    backend = LocalBackend([EchoChat()], {"gpt-4o-mini": "echo-chat"})
    assert backend.serves("echo-chat")
    assert backend.serves("gpt-4o-mini")
    assert not backend.serves("gpt-4o")
    assert backend.model_names == ["echo-chat", "gpt-4o-mini"]
    with pytest.raises(ValueError, match="not a local model"):
        LocalBackend([EchoChat()], {"x": "missing"})


async def test_local_answers_with_the_name_asked_for(local: LocalBackend) -> None:
    body = {"model": "gpt-4o-mini", "messages": []}
    answer = await local.attempt(CHAT, json.dumps(body).encode())
    assert answer.status == 200
    assert answer.should_retry is None
    assert json.loads(answer.body)["model"] == "gpt-4o-mini"
    assert answer.request_id.startswith("req_")


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "code"),
    [
        (CHAT, b"not json", 400, "invalid_json"),
        (CHAT, b"[1, 2]", 400, "invalid_json"),
        (CHAT, b'{"messages": []}', 400, "missing_required_parameter"),
        (CHAT, b'{"model": "nobody"}', 404, "model_not_found"),
        ("/v1/embeddings", b'{"model": "echo-chat", "input": "hi"}', 404, "unsupported_endpoint"),
        (CHAT, b'{"model": "exploding"}', 500, None),
    ],
)
async def test_local_errors_are_openai_shaped_and_final(
    local: LocalBackend, endpoint: str, body: bytes, status: int, code: str | None
) -> None:
    answer = await local.attempt(endpoint, body)
    assert answer.status == status
    assert answer.should_retry is False
    assert answer.answered
    error = json.loads(answer.body)["error"]
    assert error["code"] == code
    assert error["type"] == ("server_error" if status == 500 else "invalid_request_error")


async def test_local_lists_its_models(local: LocalBackend) -> None:
    listed = await local.list_models()
    assert [item["id"] for item in listed] == ["echo-chat", "exploding", "gpt-4o-mini"]
    assert all(item["object"] == "model" and isinstance(item["created"], int) for item in listed)
