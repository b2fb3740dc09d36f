"""OpenAI-shaped response bodies for the fake upstream (tests/support/fake_upstream.py). Pure."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from collections.abc import Callable
from typing import Any

import msgspec

MODELS = ("fake-chat", "fake-embed", "gpt-4o-mini", "text-embedding-3-small", "omni-moderation-latest")
REPLY = "This is a fake reply from the Overnight test upstream."
REPLY_TOKENS = 11
_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_encode = msgspec.json.encode

Builder = Callable[[dict[str, Any], int, int], dict[str, Any]]
"""(request body, serial number, now) -> response body"""


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    if status == 401:
        kind = "authentication_error"
    elif status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return _encode({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _prompt_tokens(body: dict[str, Any]) -> int:
    return max(1, len(_encode(body.get("messages") or body.get("prompt") or body.get("input") or "")) // 4)


def chat(body: dict[str, Any], n: int, now: int) -> dict[str, Any]:
    prompt = _prompt_tokens(body)
    return {
        "id": f"chatcmpl-fake{n:012d}",
        "object": "chat.completion",
        "created": now,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": REPLY_TOKENS,
            "total_tokens": prompt + REPLY_TOKENS,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def completion(body: dict[str, Any], n: int, now: int) -> dict[str, Any]:
    prompt = _prompt_tokens(body)
    return {
        "id": f"cmpl-fake{n:012d}",
        "object": "text_completion",
        "created": now,
        "model": body["model"],
        "choices": [{"text": REPLY, "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": REPLY_TOKENS,
            "total_tokens": prompt + REPLY_TOKENS,
        },
        "system_fingerprint": "fp_fake",
    }


def response(body: dict[str, Any], n: int, now: int) -> dict[str, Any]:
    prompt = _prompt_tokens(body)
    return {
        "id": f"resp_fake{n:012d}",
        "object": "response",
        "created_at": now,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": body["model"],
        "output": [
            {
                "type": "message",
                "id": f"msg_fake{n:012d}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": REPLY, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": REPLY_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + REPLY_TOKENS,
        },
    }


def _items(value: Any) -> list[Any]:
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


def _vector(item: Any, dimensions: int) -> list[float]:
    seed = int.from_bytes(hashlib.blake2b(_encode(item), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    return [round(rng.uniform(-1.0, 1.0), 6) for _ in range(dimensions)]


def embeddings(body: dict[str, Any], n: int, now: int) -> dict[str, Any]:
    dims = body.get("dimensions")
    dimensions = dims if isinstance(dims, int) and 0 < dims <= 4096 else 8
    as_base64 = body.get("encoding_format") == "base64"
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, item in enumerate(_items(body.get("input", ""))):
        vector = _vector(item, dimensions)
        tokens += len(item) if isinstance(item, list) else max(1, len(str(item)) // 4)
        encoded: Any = vector
        if as_base64:  # what the official SDK asks for by default: little-endian float32
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def moderations(body: dict[str, Any], n: int, now: int) -> dict[str, Any]:
    results = [
        {
            "flagged": False,
            "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
            "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 0.0001),
            "category_applied_input_types": {name: ["text"] for name in _MODERATION_CATEGORIES},
        }
        for _ in _items(body.get("input", ""))
    ]
    return {"id": f"modr-fake{n:012d}", "model": body["model"], "results": results}


BUILDERS: dict[str, Builder] = {
    "/v1/chat/completions": chat,
    "/v1/completions": completion,
    "/v1/embeddings": embeddings,
    "/v1/responses": response,
    "/v1/moderations": moderations,
}


# -- streamed answers (`"stream": true`) -------------------------------------------------------------


def _sse(payload: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + _encode(payload) + b"\n\n"


def _pieces() -> list[str]:
    words = REPLY.split(" ")
    return [word + (" " if index < len(words) - 1 else "") for index, word in enumerate(words)]


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def chat_stream(body: dict[str, Any], n: int, now: int) -> list[bytes]:
    whole = chat(body, n, now)
    head = {"id": whole["id"], "object": "chat.completion.chunk", "created": now, "model": body["model"]}
    head["system_fingerprint"] = "fp_fake"

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**head, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _pieces()]
    events.append(chunk({}, "stop"))
    if _wants_usage(body):
        events.append(_sse({**head, "choices": [], "usage": whole["usage"]}))
    return [*events, b"data: [DONE]\n\n"]


def completion_stream(body: dict[str, Any], n: int, now: int) -> list[bytes]:
    whole = completion(body, n, now)
    head = {"id": whole["id"], "object": "text_completion", "created": now, "model": body["model"]}

    def chunk(text: str, finish: str | None = None) -> bytes:
        return _sse(
            {**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        )

    events = [chunk(piece) for piece in _pieces()] + [chunk("", "stop")]
    if _wants_usage(body):
        events.append(_sse({**head, "choices": [], "usage": whole["usage"]}))
    return [*events, b"data: [DONE]\n\n"]


def response_stream(body: dict[str, Any], n: int, now: int) -> list[bytes]:
    whole = response(body, n, now)
    started = {**whole, "status": "in_progress", "output": [], "usage": None}
    item_id = whole["output"][0]["id"]
    events = [
        _sse({"type": "response.created", "sequence_number": 0, "response": started}, "response.created")
    ]
    for number, piece in enumerate(_pieces(), start=1):
        delta = {
            "type": "response.output_text.delta",
            "sequence_number": number,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": piece,
            "logprobs": [],
        }
        events.append(_sse(delta, "response.output_text.delta"))
    done = {"type": "response.completed", "sequence_number": len(events), "response": whole}
    return [*events, _sse(done, "response.completed")]


StreamBuilder = Callable[[dict[str, Any], int, int], list[bytes]]
STREAM_BUILDERS: dict[str, StreamBuilder] = {
    "/v1/chat/completions": chat_stream,
    "/v1/completions": completion_stream,
    "/v1/responses": response_stream,
}
