"""The answers of `smollm2-135m-instruct` (overnight.backends.local.chat), shaped like OpenAI's."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from overnight.backends.local.chat_requests import CHAT, COMPLETIONS, Generation, Job

SYSTEM_FINGERPRINT = "fp_smollm2_135m_q4_1"


def new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def usage_counts(generations: list[Generation], n: int) -> tuple[int, int]:
    """(prompt tokens, completion tokens): each prompt counted once however many choices it has."""
    prompt = sum(g.prompt_tokens for g in generations[::n])
    return prompt, sum(g.completion_tokens for g in generations)


def chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _choices_body(
    kind: str, prefix: str, choices: list[dict[str, Any]], usage: tuple[int, int], model: str
) -> bytes:
    body = {
        "id": new_id(prefix),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    body["usage"] = chat_usage(*usage)
    body["system_fingerprint"] = SYSTEM_FINGERPRINT
    return msgspec.json.encode(body)


def chat_body(generations: list[Generation], job: Job, model_name: str) -> bytes:
    choices: list[dict[str, Any]] = [
        {
            "index": index,
            "message": {"role": "assistant", "content": g.text, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": g.finish_reason,
        }
        for index, g in enumerate(generations)
    ]
    return _choices_body(
        "chat.completion", "chatcmpl-", choices, usage_counts(generations, job.n), model_name
    )


def completion_body(generations: list[Generation], job: Job, model_name: str) -> bytes:
    choices: list[dict[str, Any]] = [
        {"index": index, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
        for index, g in enumerate(generations)
    ]
    return _choices_body("text_completion", "cmpl-", choices, usage_counts(generations, job.n), model_name)


def message_item(message_id: str, status: str, text: str | None) -> dict[str, Any]:
    """The assistant message of a response; `text` None: no content yet (a stream's first item)."""
    content = [] if text is None else [output_text(text)]
    return {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": content}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(
    job: Job,
    request: dict[str, Any],
    model_name: str,
    *,
    ids: tuple[str, int],
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A response object; `ids` is its id and created_at (a stream's events all carry the same)."""
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    return {
        "id": ids[0],
        "object": "response",
        "created_at": ids[1],
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": job.sampling.max_tokens,
        "model": model_name,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "temperature": job.sampling.temperature,
        "text": text or {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": job.sampling.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": request.get("metadata") if isinstance(request.get("metadata"), dict) else {},
    }


def response_status(generation: Generation) -> str:
    return "completed" if generation.finish_reason == "stop" else "incomplete"


def responses_body(generation: Generation, job: Job, request: dict[str, Any], model_name: str) -> bytes:
    status = response_status(generation)
    message = message_item(new_id("msg_"), status, generation.text)
    usage = response_usage(generation.prompt_tokens, generation.completion_tokens)
    body = response_object(
        job,
        request,
        model_name,
        ids=(new_id("resp_"), int(time.time())),
        status=status,
        output=[message],
        usage=usage,
    )
    return msgspec.json.encode(body)


def answer(
    endpoint: str, job: Job, generations: list[Generation], request: dict[str, Any], model_name: str
) -> bytes:
    if endpoint == CHAT:
        return chat_body(generations, job, model_name)
    if endpoint == COMPLETIONS:
        return completion_body(generations, job, model_name)
    return responses_body(generations[0], job, request, model_name)
