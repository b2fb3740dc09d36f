"""Real client libraries from PyPI driven against a server, as their users write them. Run with the
interpreter of the client libraries' own environment (`make .venv-clients/.ready`: they need openai < 3,
the project's tests the newest SDK, and batchata Python 3.12), one library per run, in a scratch folder
(the current directory: what a library keeps on disk goes there); prints one JSON object of what came back.

    .venv-clients/bin/python tests/support/client_libraries.py autobatcher BASE_URL API_KEY MODEL
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
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


async def autobatcher_batch_mode(base_url: str, api_key: str, model: str) -> dict[str, Any]:
    """autobatcher's batch mode (`completion_window="24h"`): the calls go as one batch of the Batch API."""
    from autobatcher import BatchOpenAI

    client = BatchOpenAI(
        api_key=api_key,
        base_url=base_url,
        completion_window="24h",
        batch_window_seconds=0.2,
        poll_interval_seconds=0.1,
        max_retries=0,
    )
    try:
        chats = await asyncio.gather(
            *(
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
                for prompt in PROMPTS
            )
        )
        batches = [batch async for batch in client.batches.list(limit=5)]
    finally:
        await client.close()
    return {
        "chat": [chat.choices[0].message.content for chat in chats],
        "batch_status": batches[0].status if batches else None,
        "batch_total": batches[0].request_counts.total if batches and batches[0].request_counts else None,
    }


def _library_env(base_url: str, api_key: str) -> None:
    """The standard variables, which these libraries read (and the SDK they build on)."""
    os.environ.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY=api_key, HOME=str(Path.cwd() / "home"))


def _batch_input(model: str) -> Path:
    path = Path.cwd() / "requests.jsonl"
    with path.open("w") as handle:
        for number, prompt in enumerate(PROMPTS):
            body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
            request = {
                "custom_id": f"q{number}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            handle.write(json.dumps(request) + "\n")
    return path


def batchwizard(base_url: str, api_key: str, model: str) -> dict[str, Any]:
    """batchwizard's CLI, `batchwizard process FILE`: submit, watch, download the results."""
    _library_env(base_url, api_key)
    source = _batch_input(model)
    command = [str(Path(sys.executable).with_name("batchwizard")), "process", str(source)]
    command += ["--output-directory", "out", "--check-interval", "1"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"batchwizard exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    lines = [json.loads(line) for path in sorted(Path("out").glob("*_results.jsonl")) for line in path.open()]
    return {
        "custom_ids": sorted(line["custom_id"] for line in lines),
        "chat": [line["response"]["body"]["choices"][0]["message"]["content"] for line in lines],
        "errors_files": len(list(Path("out").glob("*_errors.jsonl"))),
    }


async def langasync(base_url: str, api_key: str, model: str) -> dict[str, Any]:
    """langasync around a LangChain chain (prompt | ChatOpenAI | parser): one batch, polled to the end."""
    _library_env(base_url, api_key)
    os.environ.update(LANGASYNC_BATCH_POLL_INTERVAL="0.2", LANGASYNC_BASE_STORAGE_PATH="langasync_jobs")
    from langasync import BatchPoller, BatchStatus, batch_chain
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
    chain = prompt | ChatOpenAI(model=model, base_url=base_url, api_key=api_key) | StrOutputParser()
    job = await batch_chain(chain).submit([{"question": question} for question in PROMPTS])
    statuses, replies = [], []
    async for result in BatchPoller().wait_all():
        statuses.append(str(result.status_info.status.value))
        if result.status_info.status == BatchStatus.COMPLETED:
            replies.extend(result.results)
    return {"job": bool(job.job_id), "statuses": statuses, "chat": replies}


def batchata(base_url: str, api_key: str, model: str) -> dict[str, Any]:
    """batchata's `Batch(...).add_job(...).run()`, on an OpenAI model name it knows (synchronous: it sets
    signal handlers, so it runs in the main thread)."""
    _library_env(base_url, api_key)
    from batchata import Batch

    batch = Batch(results_dir="batchata_results", max_parallel_batches=1, items_per_batch=len(PROMPTS))
    batch = batch.set_default_params(model="gpt-4o-mini-2024-07-18").set_verbosity("warn")
    for prompt in PROMPTS:
        batch.add_job(messages=[{"role": "user", "content": prompt}])
    results = batch.run().results()
    return {
        "chat": [job.raw_response for job in results["completed"]],
        "failed": len(results["failed"]),
        "cancelled": len(results["cancelled"]),
    }


LIBRARIES: dict[str, Callable[[str, str, str], Coroutine[Any, Any, dict[str, Any]] | dict[str, Any]]] = {
    "autobatcher": autobatcher,
    "autobatcher-batch": autobatcher_batch_mode,
    "batchling": batchling,
    "batchwizard": batchwizard,
    "langasync": langasync,
    "batchata": batchata,
}


def main() -> None:
    library, base_url, api_key, model = sys.argv[1:5]
    result = LIBRARIES[library](base_url, api_key, model)
    print(json.dumps(asyncio.run(result) if inspect.iscoroutine(result) else result))


if __name__ == "__main__":
    main()
