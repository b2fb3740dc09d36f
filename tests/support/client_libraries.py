"""Real client libraries from PyPI driven against a server, as their users write them. Run with the
interpreter of the client libraries' own environment (`make .venv-clients/.ready`: they need openai < 3,
the project's tests the newest SDK), one library per run; prints one JSON object of what came back.

    .venv-clients/bin/python tests/support/client_libraries.py autobatcher BASE_URL API_KEY MODEL
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

PROMPTS = ("Name a colour.", "Name a fruit.", "Name a city.")


async def autobatcher(base_url: str, api_key: str, model: str) -> dict[str, Any]:
    """autobatcher's default mode: each chat completion and response is a background response."""
    from autobatcher import BatchOpenAI

    client = BatchOpenAI(api_key=api_key, base_url=base_url, poll_interval_seconds=0.1, max_retries=0)
    try:
        chats = await asyncio.gather(
            *(
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
                for prompt in PROMPTS
            )
        )
        response = await client.responses.create(model=model, input="Say hello.")
    finally:
        await client.close()
    return {
        "chat": [chat.choices[0].message.content for chat in chats],
        "chat_objects": [chat.object for chat in chats],
        "response": response.output_text,
        "response_status": response.status,
    }


async def batchling(base_url: str, api_key: str, model: str) -> dict[str, Any]:
    """batchling around the official SDK: a host it does not know gets the calls as they are."""
    from batchling import batchify
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
    async with batchify(cache=False, live_display=False, batch_window_seconds=0.1):
        chats = await asyncio.gather(
            *(
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
                for prompt in PROMPTS
            )
        )
        embedding = await client.embeddings.create(model="text-embedding-3-small", input="hello")
    await client.close()
    return {
        "chat": [chat.choices[0].message.content for chat in chats],
        "chat_objects": [chat.object for chat in chats],
        "embedding_length": len(embedding.data[0].embedding),
    }


LIBRARIES = {"autobatcher": autobatcher, "batchling": batchling}


def main() -> None:
    library, base_url, api_key, model = sys.argv[1:5]
    print(json.dumps(asyncio.run(LIBRARIES[library](base_url, api_key, model))))


if __name__ == "__main__":
    main()
