"""Overnight in front of a real model server: llama.cpp's OpenAI-compatible server (issue 8).

Real servers answer 500 to requests they will never serve: embeddings sent to a chat-only server, a
message with an unknown role. Those lines must end in the error file with the server's own answer,
within their retry budget, while a healthy batch on the same backend completes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from acceptance.conftest import make_client, read_lines, upload, wait_for
from support.llama_server import MODEL_ALIAS, LlamaServer, llama_server_missing
from support.server import OvernightServer

MISSING = llama_server_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
TIMEOUT_S = 180.0
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "llama-server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def overnight(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("overnight-real")
    config = root / "overnight.toml"
    config.write_text(
        "local_models = false\n"
        "worker_poll_interval_s = 0.1\n"
        "retry_base_delay_s = 0.05\n"
        "retry_max_delay_s = 0.2\n"
        f"max_attempts = {MAX_ATTEMPTS}\n"
        "[[backends]]\n"
        'name = "llamacpp"\n'
        f'base_url = "{llama.base_url}"\n'
        f'models = ["{MODEL_ALIAS}"]\n'
        "max_concurrency = 2\n"
    )
    server = OvernightServer(root / "data", config)
    server.start()
    yield server
    server.stop()


def chat(custom_id: str, role: str = "user") -> dict[str, Any]:
    body = {
        "model": MODEL_ALIAS,
        "messages": [{"role": role, "content": "Name one colour."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def embedding(custom_id: str) -> dict[str, Any]:
    body = {"model": MODEL_ALIAS, "input": "The cat sat on the mat."}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def create(client: OpenAI, lines: list[dict[str, Any]], endpoint: str) -> str:
    file = upload(client, lines)
    batch = client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    return batch.id


def test_refused_lines_end_in_the_error_file_while_a_healthy_batch_completes(
    overnight: OvernightServer,
) -> None:
    client = make_client(overnight.base_url)
    embeddings = create(client, [embedding(f"e{i}") for i in range(3)], "/v1/embeddings")
    mixed = create(
        client, [chat("ok-0"), chat("robot-0", role="robot"), chat("ok-1")], "/v1/chat/completions"
    )
    healthy = create(client, [chat(f"h{i}") for i in range(4)], "/v1/chat/completions")

    done = wait_for(client, healthy, timeout=TIMEOUT_S)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 4, 0)
    for line in read_lines(client, done.output_file_id):
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] <= 4
        assert (
            body["usage"]["total_tokens"]
            == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )

    refused = wait_for(client, embeddings, timeout=TIMEOUT_S)
    assert refused.status == "completed"
    assert refused.request_counts is not None
    assert (refused.request_counts.completed, refused.request_counts.failed) == (0, 3)
    for line in read_lines(client, refused.error_file_id):
        assert line["response"]["status_code"] == 500
        assert "embedding=True" in line["response"]["body"]["error"]["message"]  # llama.cpp's own words

    partly = wait_for(client, mixed, timeout=TIMEOUT_S)
    assert partly.status == "completed"
    assert partly.request_counts is not None
    assert (partly.request_counts.completed, partly.request_counts.failed) == (2, 1)
    (robot,) = read_lines(client, partly.error_file_id)
    assert robot["custom_id"] == "robot-0"
    assert robot["response"]["status_code"] == 500
    assert "robot" in robot["response"]["body"]["error"]["message"]

    usage = client.batches.retrieve(healthy).usage
    assert usage is not None
    assert usage.output_tokens > 0
    log = overnight.log()
    assert "status=500" in log  # the upstream-error digest names what the server answered
    assert "circuit open" not in log  # refusals of requests are not a sick backend
