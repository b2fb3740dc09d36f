"""The models Overnight carries: a server with no model server anywhere still runs batches.

Driven by the official SDK in strict mode; each test starts its own server (some with no config).
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from openai import OpenAI
from openai.types import CreateEmbeddingResponse

from acceptance.conftest import chat_line, make_client, read_lines, upload, wait_for, write_config
from overnight.backends.local.embeddings import is_available
from support.server import FakeUpstreamProcess, OvernightServer, free_port

pytestmark = pytest.mark.skipif(not is_available(), reason="the local embeddings model is not installed")

MINILM = "all-minilm-l6-v2"
CHAT_MODEL = "smollm2-135m-instruct"  # listed too where llama-cpp-python is installed
EMBEDDINGS: Final = "/v1/embeddings"


def embedding_line(custom_id: str, model: str = MINILM, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS, "body": {"model": model, **body}}


def run_embeddings(client: OpenAI, lines: list[dict[str, Any]]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """Run a batch; the batch and its result lines by custom_id (output and error files together)."""
    file = upload(client, lines)
    batch = client.batches.create(input_file_id=file.id, endpoint=EMBEDDINGS, completion_window="24h")
    batch = wait_for(client, batch.id)
    results = read_lines(client, batch.output_file_id) + read_lines(client, batch.error_file_id)
    return batch, {line["custom_id"]: line for line in results}


def ids_of(client: OpenAI) -> list[str]:
    """The listed model ids, less the chat model (present only where it is installed)."""
    return [model.id for model in client.models.list() if model.id != CHAT_MODEL]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[OvernightServer]]:
    servers: list[OvernightServer] = []
    yield servers
    for server in servers:
        server.stop()


def start(servers: list[OvernightServer], root: Path, config: Path | None = None, **env: str) -> OpenAI:
    server = OvernightServer(root / "data", config, env={"OVERNIGHT_WORKER_POLL_INTERVAL_S": "0.1", **env})
    servers.append(server)
    server.start()
    return make_client(server.base_url)


def test_no_config_no_upstream_runs_an_embeddings_batch(
    tmp_path: Path, started: list[OvernightServer]
) -> None:
    client = start(started, tmp_path)
    assert ids_of(client) == [MINILM]
    assert client.models.retrieve(MINILM).owned_by == "overnight"

    lines = [embedding_line(f"s{n}", input=f"sentence number {n} about the sea") for n in range(40)]
    lines += [
        embedding_line("list", input=["the first", "the second"]),
        embedding_line("tokens", input=[7592, 1010, 2088, 999]),  # hello , world !
        embedding_line("text", input="hello, world!"),
        embedding_line("base64", input="hello, world!", encoding_format="base64"),
        embedding_line("bad-dimensions", input="hi", dimensions=256),
    ]
    batch, results = run_embeddings(client, lines)

    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (len(lines) - 1, 1)
    bodies = {cid: line["response"]["body"] for cid, line in results.items()}
    answers = {  # the SDK's own type (base64 it decodes client-side, so it is checked by hand)
        cid: CreateEmbeddingResponse.model_validate(body)
        for cid, body in bodies.items()
        if "data" in body and cid != "base64"
    }
    assert answers["s0"].model == MINILM
    assert len(answers["s0"].data[0].embedding) == 384
    assert [item.index for item in answers["list"].data] == [0, 1]
    assert answers["tokens"].usage.prompt_tokens == answers["text"].usage.prompt_tokens == 4
    assert cosine(answers["tokens"].data[0].embedding, answers["text"].data[0].embedding) > 0.9999
    packed = bodies["base64"]["data"][0]["embedding"]
    assert isinstance(packed, str)
    unpacked = struct.unpack("<384f", base64.b64decode(packed))
    assert unpacked == tuple(answers["text"].data[0].embedding)
    refused = results["bad-dimensions"]["response"]
    assert refused["status_code"] == 400
    assert refused["body"]["error"]["param"] == "dimensions"


def test_aliases_answer_with_the_alias(tmp_path: Path, started: list[OvernightServer]) -> None:
    config = tmp_path / "overnight.toml"
    config.write_text('[model_aliases]\n"text-embedding-3-small" = "all-minilm-l6-v2"\n')
    client = start(started, tmp_path, config)
    assert ids_of(client) == [MINILM, "text-embedding-3-small"]
    batch, results = run_embeddings(client, [embedding_line("a", model="text-embedding-3-small", input="hi")])
    assert batch.status == "completed"
    assert results["a"]["response"]["body"]["model"] == "text-embedding-3-small"


def test_local_models_and_upstreams_serve_side_by_side(
    tmp_path: Path, started: list[OvernightServer], upstream: FakeUpstreamProcess
) -> None:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    dead = (
        f'[[backends]]\nname = "dead"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\nmodels = ["dead-*"]\n'
    )
    config.write_text(config.read_text() + dead)
    client = start(started, tmp_path, config)

    listed = ids_of(client)  # the dead backend is skipped, not an error
    assert listed == [
        "fake-chat",
        "fake-embed",
        "gpt-4o-mini",
        "text-embedding-3-small",
        "omni-moderation-latest",
        MINILM,
    ]

    chat_file = upload(client, [chat_line(f"c{n}") for n in range(5)])
    chat = client.batches.create(
        input_file_id=chat_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    embedded, results = run_embeddings(client, [embedding_line(f"e{n}", input=f"text {n}") for n in range(5)])
    chat = wait_for(client, chat.id)
    assert (chat.status, embedded.status) == ("completed", "completed")
    assert {line["response"]["body"]["model"] for line in results.values()} == {MINILM}
    assert all(line["response"]["request_id"].startswith("req_local_") for line in results.values())


def test_local_models_can_be_turned_off(tmp_path: Path, started: list[OvernightServer]) -> None:
    client = start(started, tmp_path, OVERNIGHT_LOCAL_MODELS="false")
    assert ids_of(client) == []
    file = upload(client, [embedding_line("a", input="hi")])
    batch = client.batches.create(input_file_id=file.id, endpoint=EMBEDDINGS, completion_window="24h")
    batch = wait_for(client, batch.id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert batch.errors.data[0].code == "model_not_found"
