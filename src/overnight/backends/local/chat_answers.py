"""The answers of `smollm2-135m-instruct` (overnight.backends.local.chat), shaped like OpenAI's."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from overnight.backends.local.chat_requests import CHAT, COMPLETIONS, Generation, Job

SYSTEM_FINGERPRINT = "fp_smollm2_135m_q4_1"


def _id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def _usage(generations: list[Generation], n: int) -> tuple[int, int]:
    """(prompt tokens, completion tokens): each prompt counted once however many choices it has."""
    prompt = sum(g.prompt_tokens for g in generations[::n])
    return prompt, sum(g.completion_tokens for g in generations)


def _chat_usage(prompt: int, completion: int) -> dict[str, Any]:
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
        "id": _id(prefix),
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    body["usage"] = _chat_usage(*usage)
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
    return _choices_body("chat.completion", "chatcmpl-", choices, _usage(generations, job.n), model_name)


def completion_body(generations: list[Generation], job: Job, model_name: str) -> bytes:
    choices: list[dict[str, Any]] = [
        {"index": index, "text": g.text, "logprobs": None, "finish_reason": g.finish_reason}
        for index, g in enumerate(generations)
    ]
    return _choices_body("text_completion", "cmpl-", choices, _usage(generations, job.n), model_name)


def responses_body(generation: Generation, job: Job, request: dict[str, Any], model_name: str) -> bytes:
    complete = generation.finish_reason == "stop"
    status = "completed" if complete else "incomplete"
    message = {
        "id": _id("msg_"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": generation.text, "annotations": [], "logprobs": []}],
    }
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    text = request.get("text") if isinstance(request.get("text"), dict) else None
    return msgspec.json.encode(
        {
            "id": _id("resp_"),
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None if complete else {"reason": "max_output_tokens"},
            "instructions": request.get("instructions"),
            "max_output_tokens": job.sampling.max_tokens,
            "model": model_name,
            "output": [message],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "temperature": job.sampling.temperature,
            "text": text or {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": job.sampling.top_p,
            "truncation": "disabled",
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": completion,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + completion,
            },
            "user": None,
            "metadata": request.get("metadata") if isinstance(request.get("metadata"), dict) else {},
        }
    )


def answer(
    endpoint: str, job: Job, generations: list[Generation], request: dict[str, Any], model_name: str
) -> bytes:
    if endpoint == CHAT:
        return chat_body(generations, job, model_name)
    if endpoint == COMPLETIONS:
        return completion_body(generations, job, model_name)
    return responses_body(generations[0], job, request, model_name)
