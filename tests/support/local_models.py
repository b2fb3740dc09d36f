"""Stand-in local models, for tests of the local backend that do not depend on a real model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from overnight.backends.local.base import LocalStream
from overnight.domain.models import Usage

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


class EchoChat:
    """A stand-in local chat model: the local backend's contract does not depend on the model."""

    name = "echo-chat"
    endpoints = frozenset({"/v1/chat/completions", "/v1/completions"})

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        body = {"id": "chatcmpl-echo", "object": "chat.completion", "model": model_name, "usage": USAGE}
        return 200, json.dumps(body).encode()

    async def stream(self, endpoint: str, request: dict[str, Any], model_name: str) -> LocalStream:
        """One content chunk, the usage chunk when asked, and [DONE]."""
        chunk: dict[str, Any] = {
            "id": "chatcmpl-echo",
            "object": "chat.completion.chunk",
            "model": model_name,
        }
        events: list[dict[str, Any]] = [
            {**chunk, "choices": [{"index": 0, "delta": {"content": "echo"}, "finish_reason": None}]}
        ]
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": USAGE})

        async def written() -> AsyncIterator[bytes]:
            for event in events:
                yield b"data: " + json.dumps(event).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        async def close() -> None:
            pass

        return LocalStream(written(), close, lambda: Usage(input_tokens=3, output_tokens=2))
