"""Cancel, expiry and restarts (kill -9 and SIGTERM) through the real server and the official SDK.

The restart tests start their own server (on a tmp_path data folder) so that killing it disturbs no
other test. Lines are told apart at the fake upstream by a per-line `fake.key`, counted in `/_stats`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from openai.types import Batch

from acceptance.conftest import (
    TERMINAL,
    chat_line,
    make_client,
    read_lines,
    upload,
    wait_for,
    write_config,
)
from support.server import FakeUpstreamProcess, OvernightServer

MAX_CONCURRENCY = 16  # the backend's max_concurrency in write_config
SLOW_MS = 60_000  # far longer than any test: such a line only ends by being abandoned


def create_batch(client: OpenAI, lines: list[dict[str, Any]], window: str = "24h") -> Batch:
    file = upload(client, lines)
    return client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    )


def completed(batch: Batch) -> int:
    return batch.request_counts.completed if batch.request_counts is not None else 0


def lines_by_id(client: OpenAI, batch: Batch) -> tuple[dict[str, Any], dict[str, Any], Counter[str]]:
    """Output lines and error lines keyed by custom_id, and how often each custom_id appears in both."""
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    seen = Counter(line["custom_id"] for line in output + errors)
    return (
        {line["custom_id"]: line for line in output},
        {line["custom_id"]: line for line in errors},
        seen,
    )


def test_cancel_mid_batch(client: OpenAI) -> None:
    fast = [f"fast-{i}" for i in range(8)]
    slow = [f"slow-{i}" for i in range(32)]
    lines = [chat_line(name) for name in fast] + [
        chat_line(name, fake={"delay_ms": SLOW_MS}) for name in slow
    ]
    batch = create_batch(client, lines)
    running = wait_for(client, batch.id, lambda b: completed(b) >= len(fast) or b.status in TERMINAL)
    assert running.status == "in_progress"

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None

    done = wait_for(client, batch.id)
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    assert done.cancelling_at is not None
    assert done.cancelled_at >= done.cancelling_at
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (40, len(fast))
    assert done.request_counts.failed == 0  # lines that never ran are not failures

    output, errors, seen = lines_by_id(client, done)
    assert seen == Counter(fast + slow)  # every custom_id exactly once across both files
    assert sorted(output) == sorted(fast)
    assert all(line["response"]["status_code"] == 200 for line in output.values())
    assert sorted(errors) == sorted(slow)
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled"
        assert line["error"]["message"]


def test_expiry_marks_unfinished_lines_batch_expired(client: OpenAI) -> None:
    # The 2 s window is an allowed completion window of the test config. The three fast lines take
    # milliseconds against the local fake upstream, far less than the window.
    fast = [f"fast-{i}" for i in range(3)]
    slow = [f"hang-{i}" for i in range(12)]
    lines = [chat_line(name) for name in fast] + [chat_line(name, fake={"hang": True}) for name in slow]
    batch = create_batch(client, lines, window="2s")
    assert batch.expires_at is not None
    assert batch.expires_at - batch.created_at == 2

    done = wait_for(client, batch.id)
    assert done.status == "expired"
    assert done.expired_at is not None
    assert done.expired_at >= batch.expires_at
    output, errors, seen = lines_by_id(client, done)
    assert seen == Counter(fast + slow)
    # The fast lines take milliseconds, but nothing here may depend on the machine's speed: one
    # that had not finished when the window closed is a batch_expired line like the hanging ones.
    assert set(output) <= set(fast)
    assert set(slow) <= set(errors)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (len(output), 0)
    for line in errors.values():
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"


# -- restarts ----------------------------------------------------------------------------------------


@pytest.fixture
def own_server(upstream: FakeUpstreamProcess, tmp_path: Path) -> Iterator[OvernightServer]:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    server = OvernightServer(tmp_path / "data", config)
    server.start()
    yield server
    server.stop()


def keyed_lines(count: int, delay_ms: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Lines whose upstream executions can be counted one by one; returns them and custom_id → key."""
    tag = uuid.uuid4().hex[:12]
    keys = {f"line-{i:03d}": f"{tag}-{i:03d}" for i in range(count)}
    lines = [chat_line(name, fake={"delay_ms": delay_ms, "key": key}) for name, key in keys.items()]
    return lines, keys


def executions(upstream: FakeUpstreamProcess, keys: dict[str, str]) -> dict[str, int]:
    by_key: dict[str, int] = upstream.stats()["by_key"]
    return {name: by_key.get(key, 0) for name, key in keys.items()}


def listed(client: OpenAI) -> tuple[set[str], set[str]]:
    return {f.id for f in client.files.list()}, {b.id for b in client.batches.list()}


def restart_mid_batch(
    server: OvernightServer, upstream: FakeUpstreamProcess, *, graceful: bool
) -> tuple[Batch, dict[str, int]]:
    """Run 200 lines, stop the server once some results are recorded, start it again; the final
    batch and each line's upstream execution count."""
    client = make_client(server.base_url)
    total = 200
    lines, keys = keyed_lines(total, delay_ms=50)
    batch = create_batch(client, lines)
    files_before, batches_before = listed(client)
    seen = wait_for(client, batch.id, lambda b: completed(b) > 0 or b.status in TERMINAL)
    # stop at once: anything done between seeing results and the stop only adds re-executions
    if graceful:
        assert server.stop() == 0  # SIGTERM: exits cleanly, within stop()'s 30 s bound
    else:
        server.kill()
    assert seen.status == "in_progress"
    assert 0 < completed(seen) < total
    server.start()
    log = server.wait_for_log(f"resuming 1 unfinished batch(es): {batch.id} (in_progress, ")
    assert f"data folder {server.data_dir.resolve()}" in log
    assert f"backend fake at {upstream.base_url} serves" in log

    files_after, batches_after = listed(client)
    assert files_before <= files_after  # data survives the restart
    assert batches_before == batches_after
    done = wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        total,
        total,
        0,
    )
    output, errors, seen_ids = lines_by_id(client, done)
    assert seen_ids == Counter(list(keys))  # every custom_id exactly once
    assert not errors
    assert all(line["response"]["status_code"] == 200 for line in output.values())
    return done, executions(upstream, keys)


def check_re_execution(runs: dict[str, int], label: str, bound: int | None) -> None:
    # A line runs again after a restart only if it reached the upstream but its result was not yet
    # committed: the requests in flight (the scheduler's window allows at most max_concurrency) plus
    # those that finished within the last group-commit interval. How many finish in one interval
    # depends on the machine's speed, so a kill -9 is only checked for "at most twice each" here;
    # `make bench` measures the figure. SIGTERM commits what finished first, so only the requests
    # in flight run again: at most max_concurrency, whatever the speed.
    again = sorted(name for name, count in runs.items() if count > 1)
    print(f"\n{label}: {len(again)} of {len(runs)} lines executed twice: {again}")
    assert all(count >= 1 for count in runs.values())
    assert max(runs.values()) <= 2
    if bound is not None:
        assert len(again) <= bound


def test_kill_9_mid_batch_resumes_without_duplicates(
    own_server: OvernightServer, upstream: FakeUpstreamProcess
) -> None:
    _done, runs = restart_mid_batch(own_server, upstream, graceful=False)
    check_re_execution(runs, "kill -9", bound=None)


def test_sigterm_mid_batch_exits_cleanly_and_resumes(
    own_server: OvernightServer, upstream: FakeUpstreamProcess
) -> None:
    _done, runs = restart_mid_batch(own_server, upstream, graceful=True)
    check_re_execution(runs, "SIGTERM", bound=MAX_CONCURRENCY)
    assert "Traceback" not in own_server.log()


def test_files_and_batches_survive_a_restart(own_server: OvernightServer) -> None:
    client = make_client(own_server.base_url)
    file = upload(client, [chat_line(f"s{i}") for i in range(3)])
    batch = wait_for(client, create_batch(client, [chat_line("t")]).id)
    assert batch.status == "completed"
    before = listed(client)
    content = client.files.content(file.id).content
    assert {file.id, batch.output_file_id} <= before[0]
    assert batch.id in before[1]

    own_server.kill()
    own_server.start()

    assert listed(client) == before
    again = client.batches.retrieve(batch.id)
    assert again.model_dump() == batch.model_dump()
    assert client.files.content(file.id).content == content
    assert [line["custom_id"] for line in read_lines(client, again.output_file_id)] == ["t"]
