"""Stand-in local models, for tests of the local backend that do not depend on a real model."""

from __future__ import annotations

import json
from typing import Any


class EchoChat:
    """A stand-in local chat model: the local backend's contract does not depend on the model."""

    name = "echo-chat"
    endpoints = frozenset({"/v1/chat/completions", "/v1/completions"})

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def handle(self, endpoint: str, request: dict[str, Any], model_name: str) -> tuple[int, bytes]:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        body = {"id": "chatcmpl-echo", "object": "chat.completion", "model": model_name, "usage": usage}
        return 200, json.dumps(body).encode()
