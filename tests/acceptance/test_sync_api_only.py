"""Synchronous requests in an API process without the worker (`serve --no-worker`) on PostgreSQL: it
holds its share of each backend's global slots like a worker, only while synchronous requests are there,
so online traffic gets through a batch that saturates the backend from another process, and the
upstream never sees more than `max_concurrency` (docs/sync.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from acceptance.conftest import chat_line, make_client, upload
from support.fake_bodies import REPLY
from support.server import FakeUpstreamProcess, free_port, stop_process, wait_until_healthy

MAX_CONCURRENCY = 2
WAIT_S = 60.0


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S} s")
        time.sleep(0.02)


def metrics_of(root: str) -> str:
    with urllib.request.urlopen(f"{root}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
        return text


def start(command: list[str], env: dict[str, str], log: Path, health_port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "overnight", *command], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    wait_until_healthy(f"http://127.0.0.1:{health_port}/health", process)
    return process


@pytest.fixture
def split(tmp_path: Path, database_url: str) -> Iterator[tuple[str, str, FakeUpstreamProcess]]:
    """An API-only server and one worker sharing PostgreSQL and a data folder: the API's base URL, the
    worker's metrics port's, and the upstream."""
    fake = FakeUpstreamProcess()
    config = tmp_path / "overnight.toml"
    config.write_text(
        "worker_poll_interval_s = 0.2\nresult_flush_interval_s = 0.02\nlocal_models = false\n"
        f'[[backends]]\nname = "fake"\nbase_url = "{fake.base_url}"\nmodels = ["fake-*"]\n'
        f"max_concurrency = {MAX_CONCURRENCY}\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
    env["OVERNIGHT_DATABASE_URL"] = database_url
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    api_port, worker_port = free_port(), free_port()
    processes = []
    try:
        processes.append(
            start(
                ["serve", "--no-worker", "--port", str(api_port), *common],
                env,
                tmp_path / "api.log",
                api_port,
            )
        )
        processes.append(
            start(
                ["worker", "--metrics-port", str(worker_port), *common],
                env,
                tmp_path / "worker.log",
                worker_port,
            )
        )
        yield f"http://127.0.0.1:{api_port}/v1", f"http://127.0.0.1:{worker_port}", fake
    finally:
        for process in processes:
            stop_process(process)
        fake.stop()


def test_an_api_only_server_shares_the_backend_with_the_workers(
    split: tuple[str, str, FakeUpstreamProcess],
) -> None:
    base_url, worker_url, fake = split
    client = make_client(base_url)
    alone = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    assert alone.choices[0].message.content == REPLY  # no batch: it gets slots at once

    lines = [chat_line(f"held-{n}", fake={"hold": True}) for n in range(6)]
    batch = client.batches.create(
        input_file_id=upload(client, lines).id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    until(lambda: fake.stats()["held"] == MAX_CONCURRENCY, "the worker's batch holds every slot")
    outcome: dict[str, Any] = {}

    def online() -> None:
        outcome["answer"] = client.chat.completions.create(
            model="fake-chat",
            messages=[{"role": "user", "content": "now"}],
            extra_body={"fake": {"key": "api-only"}},
        )

    thread = threading.Thread(target=online, daemon=True)
    thread.start()
    waiting = 'overnight_sync_waiting{backend="fake",tier="default"} 1'
    until(lambda: waiting in metrics_of(base_url.removesuffix("/v1")), "the request waits")
    # The worker sees the API server's demand at its next look at the slots (a poll at most), and
    # lowers its own share to half: from then on the next slot that frees is the API server's.
    share = 'overnight_backend_slots{backend="fake"} 1'
    until(lambda: share in metrics_of(worker_url), "the worker gives up half the slots")
    assert fake.stats()["max_in_flight"] <= MAX_CONCURRENCY
    fake.control(release=1)  # a worker slot frees; the worker gives it up to the API server's share
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert outcome["answer"].choices[0].message.content == REPLY
    assert fake.stats()["by_key"]["api-only"] == 1

    def finished() -> bool:
        fake.control(release=-1)
        return client.batches.retrieve(batch.id).status == "completed"

    until(finished, "the batch completes")
    assert fake.stats()["max_in_flight"] <= MAX_CONCURRENCY
