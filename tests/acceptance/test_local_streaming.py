"""The embedded chat model streams: a real `overnight serve` with no config (the embedded defaults, as
after `make serve`), driven by the official SDK in strict mode (docs/sync.md). Greedy streams give the
whole answer's text and usage, token by token; usage is counted with or without `include_usage`; a
client that leaves mid-stream stops the generation and leaves the server answering."""

from __future__ import annotations

import importlib.util
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from acceptance.conftest import make_client
from overnight.backends.local import chat
from support.server import OvernightServer
from support.webhook_receiver import wait_until

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or chat.gguf_path() is None,
    reason="the local chat model is not installed (make test installs it)",
)

MODEL = "smollm2-135m-instruct"
MESSAGES: list[Any] = [{"role": "user", "content": "Name three colours and say why you like them."}]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # a greedy completion goes on counting to max_tokens
WAIT_S = 120.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("local-streaming")
    srv = OvernightServer(root / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: OvernightServer) -> OpenAI:
    return make_client(server.base_url)


def metric(server: OvernightServer, name: str, **labels: str) -> float:
    head = name + "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "} "
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    found = [line for line in text.splitlines() if line.startswith(head)]
    return float(found[0].removeprefix(head)) if found else 0.0


def counted(server: OvernightServer, endpoint: str) -> tuple[float, float, float]:
    """(requests answered 200, input tokens, output tokens) of the local backend on `endpoint`."""
    labels = {"backend": "local", "endpoint": endpoint, "tier": "default"}
    return (
        metric(server, "overnight_sync_requests_total", **labels, status="200"),
        metric(server, "overnight_sync_tokens_total", **labels, direction="input"),
        metric(server, "overnight_sync_tokens_total", **labels, direction="output"),
    )


def test_a_greedy_chat_stream_is_the_whole_answer_token_by_token(client: OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=48)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(contents) > 5  # piece by piece, not one piece
    assert "".join(contents) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert whole.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert all(chunk.model == MODEL for chunk in chunks)


def test_a_stream_counts_its_usage_without_include_usage(client: OpenAI, server: OvernightServer) -> None:
    endpoint = "/v1/chat/completions"
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=24)
    before = counted(server, endpoint)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, temperature=0, max_tokens=24, stream=True
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    wait_until(lambda: counted(server, endpoint)[0] == before[0] + 1, "the stream counted", WAIT_S)
    after = counted(server, endpoint)
    assert whole.usage is not None
    assert (after[1] - before[1], after[2] - before[2]) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
    )


def test_a_greedy_completion_stream_is_the_whole_answer(server: OvernightServer) -> None:
    # Not strict: the SDK's Completion type says finish_reason is never null, but OpenAI's streamed
    # completion chunks carry null until the last one, and so do these.
    lenient = OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    whole = lenient.completions.create(model=MODEL, prompt="The sky is", temperature=0, max_tokens=12)
    chunks = list(
        lenient.completions.create(
            model=MODEL, prompt="The sky is", temperature=0, max_tokens=12, stream=True
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_greedy_response_stream_is_the_whole_answer(client: OpenAI) -> None:
    whole = client.responses.create(
        model=MODEL, input="Name three colours.", temperature=0, max_output_tokens=24
    )
    events = list(
        client.responses.create(
            model=MODEL, input="Name three colours.", temperature=0, max_output_tokens=24, stream=True
        )
    )
    assert events[0].type == "response.created"
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == whole.output_text == final.response.output_text
    assert final.response.usage == whole.usage


def test_a_client_leaving_mid_stream_stops_the_generation(client: OpenAI, server: OvernightServer) -> None:
    endpoint = "/v1/completions"
    lenient = OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0)
    body: dict[str, Any] = {"model": MODEL, "prompt": COUNTING, "temperature": 0, "max_tokens": 400}
    whole = lenient.completions.create(**body)
    assert whole.usage is not None
    before = counted(server, endpoint)
    stream = lenient.completions.create(**body, stream=True)
    first = next(iter(stream))
    assert first.choices[0].text
    stream.close()
    wait_until(lambda: counted(server, endpoint)[0] == before[0] + 1, "the closed stream counted", WAIT_S)
    generated = counted(server, endpoint)[2] - before[2]
    assert 0 < generated < whole.usage.completion_tokens  # stopped when the client left
    # and the server answers the next request (the model's instance was given back)
    again = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert again.choices[0].finish_reason == "length"
