"""The local embeddings model `all-minilm-l6-v2` and its micro-batcher.

tests/data/minilm_reference.json holds vectors of the fp32 reference model (sentence-transformers);
see its `note` for how they were made.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from overnight.backends.local.batcher import BatcherClosed, MicroBatcher
from overnight.backends.local.embeddings import (
    DIMENSIONS,
    ENDPOINT,
    MAX_INPUTS,
    MiniLmEmbeddings,
    default_threads,
    is_available,
)

REFERENCE = Path(__file__).parents[1] / "data" / "minilm_reference.json"

pytestmark = pytest.mark.skipif(not is_available(), reason="the local embeddings model is not installed")


@pytest.fixture(scope="module")
def loaded() -> MiniLmEmbeddings:
    """One model per module: loading takes a moment; each test starts and closes its batcher."""
    model = MiniLmEmbeddings(batch_size=8)
    model.encoder()
    return model


@pytest.fixture
async def model(loaded: MiniLmEmbeddings) -> AsyncIterator[MiniLmEmbeddings]:
    await loaded.start()
    yield loaded
    await loaded.close()


async def embed(model: MiniLmEmbeddings, **request: Any) -> tuple[int, dict[str, Any]]:
    status, body = await model.handle(ENDPOINT, {"model": model.name, **request}, model.name)
    decoded = json.loads(body)
    assert isinstance(decoded, dict)
    return status, decoded


def vectors(body: dict[str, Any]) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    return [np.array(item["embedding"], dtype=np.float32) for item in body["data"]]


def content_ids(model: MiniLmEmbeddings, text: str) -> list[int]:
    ids = model.encoder().token_ids([text])[0]
    return ids[1:-1]  # without [CLS] and [SEP]


async def test_vectors_match_the_reference_model(model: MiniLmEmbeddings) -> None:
    reference = json.loads(REFERENCE.read_text())
    status, body = await embed(model, input=reference["texts"])
    assert status == 200
    for text, got, expected in zip(reference["texts"], vectors(body), reference["vectors"], strict=True):
        assert got.shape == (DIMENSIONS,)
        assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-4
        cosine = float(np.dot(got, np.array(expected, dtype=np.float32)))
        assert cosine >= 0.99, f"cosine {cosine:.4f} for {text[:40]!r}"


async def test_answer_has_openais_shape(model: MiniLmEmbeddings) -> None:
    status, body = await embed(model, input="Hello, world!")
    assert status == 200
    assert body["object"] == "list"
    assert body["model"] == "all-minilm-l6-v2"
    assert body["data"][0]["object"] == "embedding"
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}  # hello , world !


async def test_model_name_is_the_one_asked_for(model: MiniLmEmbeddings) -> None:
    status, body = await model.handle(ENDPOINT, {"input": "hi"}, "text-embedding-3-small")
    assert status == 200
    assert json.loads(body)["model"] == "text-embedding-3-small"


async def test_string_list_and_token_inputs_agree(model: MiniLmEmbeddings) -> None:
    texts = ["The cat sat on the mat.", "A man is playing a guitar."]
    ids = [content_ids(model, text) for text in texts]
    _, one = await embed(model, input=texts[0])
    _, many = await embed(model, input=texts)
    _, tokens = await embed(model, input=ids[0])
    _, token_lists = await embed(model, input=ids)
    assert np.allclose(vectors(one)[0], vectors(many)[0], atol=1e-5)
    assert np.allclose(vectors(many)[0], vectors(tokens)[0], atol=1e-5)
    for from_text, from_ids in zip(vectors(many), vectors(token_lists), strict=True):
        assert np.allclose(from_text, from_ids, atol=1e-5)
    assert tokens["usage"]["prompt_tokens"] == len(ids[0])
    assert token_lists["usage"]["prompt_tokens"] == many["usage"]["prompt_tokens"] == sum(map(len, ids))


async def test_base64_is_little_endian_float32_of_the_same_vector(model: MiniLmEmbeddings) -> None:
    _, floats = await embed(model, input=["one", "two"], encoding_format="float")
    _, packed = await embed(model, input=["one", "two"], encoding_format="base64")
    for as_float, item in zip(vectors(floats), packed["data"], strict=True):
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert decoded.shape == (DIMENSIONS,)
        assert np.array_equal(decoded, as_float)


async def test_long_inputs_are_truncated_at_256_tokens(model: MiniLmEmbeddings) -> None:
    status, body = await embed(model, input=["word " * 1000, list(range(1000, 1600))])
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 2 * 254  # 256 with [CLS] and [SEP]


async def test_dimensions_384_is_accepted(model: MiniLmEmbeddings) -> None:
    status, _ = await embed(model, input="hi", dimensions=384)
    assert status == 200


@pytest.mark.parametrize(
    ("request_fields", "param"),
    [
        ({"input": "hi", "dimensions": 256}, "dimensions"),
        ({"input": "hi", "dimensions": "384"}, "dimensions"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
        ({}, "input"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": [1.5]}, "input"),
        ({"input": [True]}, "input"),
        ({"input": [-1]}, "input"),
        ({"input": [30522]}, "input"),
        ({"input": [[1, 2], "mixed", 3]}, "input"),
        ({"input": {"text": "hi"}}, "input"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
    ],
)
async def test_refused_requests_are_400s(
    model: MiniLmEmbeddings, request_fields: dict[str, Any], param: str
) -> None:
    status, body = await model.handle(ENDPOINT, {"model": model.name, **request_fields}, model.name)
    assert status == 400
    error = json.loads(body)["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str)
    assert isinstance(error["code"], str)


async def test_other_endpoints_are_404s(model: MiniLmEmbeddings) -> None:
    status, body = await model.handle("/v1/chat/completions", {"messages": []}, model.name)
    assert status == 404
    assert json.loads(body)["error"]["param"] == "model"


async def test_concurrent_requests_share_model_calls(model: MiniLmEmbeddings) -> None:
    texts = [f"request number {n} about {'many ' * (n % 7)}things" for n in range(40)]
    _, alone = await embed(model, input=texts[3])
    groups, calls = model.groups, model.model_calls
    answers = await asyncio.gather(*(embed(model, input=text) for text in texts))
    assert all(status == 200 for status, _ in answers)
    assert model.groups - groups < len(texts)
    assert model.model_calls - calls < len(texts)
    assert np.allclose(vectors(answers[3][1])[0], vectors(alone)[0], atol=1e-5)  # each gets its own


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 1), (4, 3), (64, 8)])
def test_default_threads_leave_a_cpu_for_the_event_loop(cpus: int, threads: int) -> None:
    assert default_threads(cpus) == threads


# -- the batcher alone ------------------------------------------------------------------------------


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail

    def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(items)
        if self.fail:
            raise ValueError("model broke")
        return [item * 10 for item in items]


async def test_batcher_groups_waiting_requests_and_keeps_order() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=100, name="test")
    try:
        results = await asyncio.gather(*(batcher.submit([n, n + 1]) for n in range(0, 20, 2)))
    finally:
        await batcher.close()
    assert results == [[n * 10, (n + 1) * 10] for n in range(0, 20, 2)]
    assert len(run.calls) < 10
    assert batcher.groups == len(run.calls)


async def test_batcher_respects_max_items_but_never_splits_a_request() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=4, name="test")
    try:
        big, *small = await asyncio.gather(
            batcher.submit(list(range(9))), *(batcher.submit([n]) for n in range(8))
        )
    finally:
        await batcher.close()
    assert big == [n * 10 for n in range(9)]
    assert small == [[n * 10] for n in range(8)]
    assert len(run.calls[0]) == 9
    assert all(len(call) <= 4 for call in run.calls[1:])


async def test_batcher_failure_reaches_every_caller_of_the_group_and_it_goes_on() -> None:
    run = Recorder(fail=True)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_items=100, name="test")
    try:
        outcomes = await asyncio.gather(*(batcher.submit([n]) for n in range(5)), return_exceptions=True)
        assert all(isinstance(outcome, ValueError) for outcome in outcomes)
        run.fail = False
        assert await batcher.submit([7]) == [70]
    finally:
        await batcher.close()


class Blocking:
    """A run function that holds the batcher's thread until `release`."""

    def __init__(self) -> None:
        self.gate = threading.Event()  # waited on in the batcher's thread
        self.started = asyncio.Event()
        self.seen: list[list[int]] = []
        self._loop = asyncio.get_running_loop()

    def __call__(self, items: list[int]) -> list[int]:
        self.seen.append(items)
        self._loop.call_soon_threadsafe(self.started.set)
        self.gate.wait(timeout=30)
        return items


async def test_batcher_skips_requests_whose_callers_gave_up() -> None:
    blocking = Blocking()
    started, gate, seen = blocking.started, blocking.gate, blocking.seen
    batcher: MicroBatcher[int, int] = MicroBatcher(blocking, max_items=100, name="test")
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.wait_for(started.wait(), 30)
    gave_up = asyncio.create_task(batcher.submit([2]))
    waiting = asyncio.create_task(batcher.submit([3]))
    await asyncio.sleep(0)
    gave_up.cancel()
    gate.set()
    assert await first == [1]
    assert await waiting == [3]
    assert [2] not in seen
    await batcher.close()


async def test_close_fails_waiting_and_running_requests() -> None:
    blocking = Blocking()
    batcher: MicroBatcher[int, int] = MicroBatcher(blocking, max_items=100, name="test")
    running = asyncio.create_task(batcher.submit([1]))
    await asyncio.wait_for(blocking.started.wait(), 30)
    waiting = asyncio.create_task(batcher.submit([2]))
    await asyncio.sleep(0)
    await batcher.close()
    blocking.gate.set()
    for task in (running, waiting):
        with pytest.raises(BatcherClosed):
            await task
    with pytest.raises(BatcherClosed):
        await batcher.submit([3])
