"""The synchronous endpoints through the real server, with the official SDK (strict) against the fake
upstream and the embedded model: chat (whole and streamed), completions, embeddings, moderations,
responses; a model nobody serves, upstream errors passed through, bad bodies; flex served and flex
refused while the backend is saturated; online requests going before a saturating batch; usage in the
costs endpoint and /metrics (docs/sync.md)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, error_shape, make_client, upload, write_config
from support.fake_bodies import REPLY, REPLY_TOKENS
from support.server import FakeUpstreamProcess, OvernightServer

KEY, PROJECT = "key-sync", "team-sync"
COSTS_KEY, COSTS_PROJECT = "key-sync-costs", "sync-costs"
ADMIN = "key-sync-admin"
MAX_CONCURRENCY = 2
FLEX_TIMEOUT_S = 1.0
INPUT_USD, OUTPUT_USD = 2.0, 8.0  # per million tokens, for fake-chat*; batch prices are half
BODY_LIMIT = 1_000_000
WAIT_S = 60.0
MESSAGES: list[Any] = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstreamProcess]:
    upstream = FakeUpstreamProcess()  # its own: these tests hold requests in it
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def server(fake: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvernightServer]:
    root = tmp_path_factory.mktemp("sync")
    config = write_config(
        root / "overnight.toml",
        fake.base_url,
        api_keys={KEY: PROJECT, COSTS_KEY: COSTS_PROJECT},
        flex_timeout_s=FLEX_TIMEOUT_S,
        sync_usage_flush_interval_s=0.05,
        sync_max_body_bytes=BODY_LIMIT,
    )
    text = config.read_text().replace("max_concurrency = 16", f"max_concurrency = {MAX_CONCURRENCY}")
    extra = ["[[api_keys]]", f'key = "{ADMIN}"', 'project = "ops"', "admin = true"]
    extra += ["[[prices]]", 'model = "fake-chat*"', f"input = {INPUT_USD}", f"output = {OUTPUT_USD}"]
    config.write_text(text + "\n".join(extra) + "\n")
    srv = OvernightServer(root / "data", config)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: OvernightServer) -> OpenAI:
    return make_client(server.base_url, KEY)


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def metrics(server: OvernightServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
        return text


def waiting(server: OvernightServer, tier: str) -> float:
    prefix = f'overnight_sync_waiting{{backend="fake",tier="{tier}"}} '
    lines = [line for line in metrics(server).splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def raw_post(server: OvernightServer, path: str, content: bytes, key: str = KEY) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx2.post(f"{server.base_url}{path}", content=content, headers=headers, timeout=30)


# -- each endpoint ------------------------------------------------------------------------------------


def test_chat_completion(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="fake-chat", messages=MESSAGES)
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None
    assert completion.usage.completion_tokens == REPLY_TOKENS


def test_streamed_chat_is_relayed_as_it_arrives(client: OpenAI, fake: FakeUpstreamProcess) -> None:
    stream = client.chat.completions.create(
        model="fake-chat",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"fake": {"stream_hold": True}},
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.role == "assistant"
    assert fake.stats()["held"] == 1  # the upstream has not finished: nothing waited for the whole answer
    fake.control(release=-1)
    rest = list(chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in rest if chunk.choices)
    assert text == REPLY
    assert rest[-1].usage is not None
    assert rest[-1].usage.completion_tokens == REPLY_TOKENS


def test_completion(client: OpenAI) -> None:
    completion = client.completions.create(model="fake-chat", prompt="hello")
    assert completion.choices[0].text == REPLY


def test_streamed_completion(server: OvernightServer) -> None:
    # Not strict: the SDK's Completion type says finish_reason is never null, but OpenAI's own streamed
    # completion chunks carry null until the last one, as the fake upstream's do.
    lenient = OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    stream = lenient.completions.create(model="fake-chat", prompt="hello", stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == REPLY


def test_embeddings_upstream(client: OpenAI) -> None:
    # floats: in strict mode the SDK validates its default base64 answer before decoding it
    answer = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], dimensions=16, encoding_format="float"
    )
    assert [len(item.embedding) for item in answer.data] == [16, 16]


def test_embeddings_on_the_embedded_model(client: OpenAI) -> None:
    answer = client.embeddings.create(
        model="all-minilm-l6-v2", input=["a sentence", "another one"], encoding_format="float"
    )
    assert [len(item.embedding) for item in answer.data] == [384, 384]
    assert answer.usage.prompt_tokens > 0


def test_the_embedded_model_refuses_to_stream(server: OvernightServer) -> None:
    body = {"model": "all-minilm-l6-v2", "input": "x", "stream": True}
    error = error_shape(raw_post(server, "/embeddings", json.dumps(body).encode()), 400)
    assert error["param"] == "stream"


def test_moderation(client: OpenAI) -> None:
    answer = client.moderations.create(model="omni-moderation-latest", input="hello")
    assert answer.results[0].flagged is False


def test_response(client: OpenAI) -> None:
    response = client.responses.create(model="fake-chat", input="hello")
    assert response.output_text == REPLY
    assert response.usage is not None


def test_streamed_response(client: OpenAI) -> None:
    events = list(client.responses.create(model="fake-chat", input="hello", stream=True))
    assert events[-1].type == "response.completed"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == REPLY


def test_a_background_response_is_handed_to_the_background_responses(client: OpenAI) -> None:
    response = client.responses.create(model="fake-chat", input="hello", background=True)
    assert response.id.startswith("resp_")
    assert response.background is True
    assert response.status in ("queued", "in_progress", "completed")


# -- errors -------------------------------------------------------------------------------------------


def test_a_model_nobody_serves_is_openais_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="nobody-serves-this", messages=MESSAGES)
    assert refused.value.code == "model_not_found"
    assert "nobody-serves-this" in refused.value.message


@pytest.mark.parametrize("status", [400, 418, 500])
def test_an_upstream_error_passes_through(client: OpenAI, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model="fake-chat", messages=MESSAGES, extra_body={"fake": {"status": status}}
        )
    assert failed.value.status_code == status
    assert failed.value.code == f"fake_{status}"


def test_an_upstream_429_keeps_its_retry_advice(client: OpenAI) -> None:
    fake = {"status": 429, "retry_after": "7", "should_retry": "false"}
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="fake-chat", messages=MESSAGES, extra_body={"fake": fake})
    headers = limited.value.response.headers
    assert (headers["retry-after"], headers["x-should-retry"]) == ("7", "false")


def test_bad_json_and_big_bodies_are_refused(server: OvernightServer) -> None:
    assert error_shape(raw_post(server, "/chat/completions", b"{nope"), 400)["code"] == "invalid_json"
    missing = error_shape(raw_post(server, "/chat/completions", b'{"messages": []}'), 400)
    assert missing["param"] == "model"
    big = json.dumps({"model": "fake-chat", "input": "x" * (BODY_LIMIT + 1)}).encode()
    assert error_shape(raw_post(server, "/embeddings", big), 413)["code"] == "request_too_large"


def test_a_key_is_needed(server: OvernightServer) -> None:
    answer = httpx2.post(f"{server.base_url}/chat/completions", json={"model": "fake-chat", "messages": []})
    assert answer.status_code == 401


# -- flex, and online before batch work ---------------------------------------------------------------


def test_flex_is_served_when_there_is_room(client: OpenAI) -> None:
    completion = client.chat.completions.create(model="fake-chat", messages=MESSAGES, service_tier="flex")
    assert completion.choices[0].message.content == REPLY


class SaturatingBatch:
    """A batch whose lines the fake upstream holds, so it keeps every slot of the backend."""

    def __init__(self, client: OpenAI, fake: FakeUpstreamProcess, lines: int) -> None:
        self.client, self.fake = client, fake
        held = [chat_line(f"held-{n}", fake={"hold": True}) for n in range(lines)]
        file = upload(client, held)
        self.batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        until(lambda: fake.stats()["held"] == MAX_CONCURRENCY, "the batch holds every slot")

    def finish(self) -> None:
        def done() -> bool:
            self.fake.control(release=-1)
            return self.client.batches.retrieve(self.batch.id).status == "completed"

        until(done, "the batch completes")


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["answer"] = call()
        except Exception as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_an_online_request_takes_the_first_slot_that_frees(
    client: OpenAI, fake: FakeUpstreamProcess, server: OvernightServer
) -> None:
    batch = SaturatingBatch(client, fake, lines=12)  # 2 held upstream, 10 queued behind them
    try:
        before = fake.stats()["requests"]
        online = lambda: client.chat.completions.create(  # noqa: E731
            model="fake-chat", messages=MESSAGES, extra_body={"fake": {"key": "online-first"}}
        )
        thread, outcome = in_thread(online)
        until(lambda: waiting(server, "default") == 1, "the online request waits for a slot")
        fake.control(release=1)  # one slot frees: it must go to the online request, not to line 3
        thread.join(WAIT_S)
        assert not thread.is_alive()  # had line 3 taken the slot, the upstream would hold it: no answer
        assert outcome["answer"].choices[0].message.content == REPLY
        stats = fake.stats()
        assert stats["by_key"].get("online-first") == 1
        # the one request the upstream saw after the freed slot (and before the online answer
        # came back) was the online one; the batch's next line came only after it
        assert stats["requests"] <= before + 2

        def completed() -> int:
            counts = client.batches.retrieve(batch.batch.id).request_counts
            return counts.completed if counts is not None else 0

        until(lambda: completed() == 1, "the released line is recorded")
        assert fake.stats()["held"] == MAX_CONCURRENCY  # the batch goes on with the slots once free
    finally:
        batch.finish()


def test_flex_gets_resource_unavailable_while_the_backend_is_saturated(
    client: OpenAI, fake: FakeUpstreamProcess
) -> None:
    batch = SaturatingBatch(client, fake, lines=MAX_CONCURRENCY)
    try:
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="fake-chat", messages=MESSAGES, service_tier="flex")
        assert time.monotonic() - started >= FLEX_TIMEOUT_S * 0.9
        assert refused.value.code == "resource_unavailable"
        assert refused.value.response.headers["x-should-retry"] == "true"
        assert refused.value.status_code == 429
    finally:
        batch.finish()


# -- accounting ---------------------------------------------------------------------------------------


def test_the_costs_count_sync_and_flex_requests(server: OvernightServer) -> None:
    client = make_client(server.base_url, COSTS_KEY)
    sync_usage = [
        client.chat.completions.create(model="fake-chat", messages=MESSAGES).usage,
        client.chat.completions.create(model="fake-chat", messages=MESSAGES).usage,
    ]
    flex_usage = client.chat.completions.create(
        model="fake-chat", messages=MESSAGES, service_tier="flex"
    ).usage
    streamed = client.chat.completions.create(
        model="fake-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    stream_usage = [chunk.usage for chunk in streamed if chunk.usage is not None]
    admin = OpenAI(base_url=server.base_url, api_key=ADMIN, admin_api_key=ADMIN, max_retries=0)
    start = int(time.time()) // 86400 * 86400

    def results() -> list[Any]:
        page = admin.admin.organization.usage.costs(
            start_time=start, group_by=["project_id", "line_item"], project_ids=[COSTS_PROJECT]
        )
        return [result for bucket in page.data for result in bucket.results]

    until(lambda: sum(getattr(r, "request_count", 0) or 0 for r in results()) == 4, "the usage is written")
    by_source = {getattr(result, "source"): result for result in results()}  # noqa: B009
    assert set(by_source) == {"sync", "flex"}
    sync_all = [*sync_usage, *stream_usage]
    sync_in = sum(u.prompt_tokens for u in sync_all if u is not None)
    sync_out = sum(u.completion_tokens for u in sync_all if u is not None)
    sync = by_source["sync"]
    assert sync.request_count == 3
    assert sync.usage["input_tokens"] == sync_in
    assert sync.amount.value == pytest.approx((sync_in * INPUT_USD + sync_out * OUTPUT_USD) / 1e6)
    assert sync.saved_amount["value"] == 0
    flex = by_source["flex"]
    assert flex_usage is not None
    assert flex.request_count == 1
    flex_usd = (flex_usage.prompt_tokens * INPUT_USD + flex_usage.completion_tokens * OUTPUT_USD) / 1e6
    assert flex.amount.value == pytest.approx(flex_usd / 2)  # flex at batch prices
    assert flex.synchronous_amount["value"] == pytest.approx(flex_usd)


def test_metrics_count_sync_requests(client: OpenAI, server: OvernightServer) -> None:
    client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="float")
    text = metrics(server)
    assert (
        'overnight_sync_requests_total{backend="fake",endpoint="/v1/embeddings",tier="default",status="200"}'
        in text
    )
    assert (
        'overnight_sync_latency_seconds_count{backend="fake",endpoint="/v1/embeddings",tier="default"}'
        in text
    )
    assert 'overnight_sync_wait_seconds_count{backend="fake",tier="default"}' in text
    assert (
        'overnight_sync_tokens_total{backend="fake",endpoint="/v1/chat/completions",tier="default",direction="output"}'
        in text
    )
    assert 'overnight_upstream_requests_total{backend="fake",status="200"}' in text
