"""Usage is counted once: after retries, a kill -9 mid-batch and a shard taken over by another worker, a
batch's `usage` (and the cost figures) equal the sum of the usage in its output file's lines exactly.

The fake upstream reports usage in every answer and fails the first attempt of some lines (they are
retried); the server, or one worker of a cluster, is killed while results are being recorded, so that
requests in flight then run again after the restart or the takeover.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from openai import OpenAI

from acceptance.conftest import chat_line, make_client, read_lines, upload, wait_for, write_config
from acceptance.test_cluster import pid_of, running_cluster, start_cluster
from support.seaweed import SeaweedS3
from support.server import FakeUpstreamProcess, OvernightServer

TIMEOUT_S = 180.0


def lines_with_retries(tag: str, count: int) -> list[dict[str, Any]]:
    """Lines whose prompts differ in length (so in usage); every third fails its first attempt."""
    lines = []
    for i in range(count):
        fake: dict[str, Any] = {"key": f"{tag}-{i}", "delay_ms": 10}
        if i % 3 == 0:
            fake["fail_times"] = 1
        line = chat_line(f"c{i}", fake=fake)
        line["body"]["messages"] = [{"role": "user", "content": "w" * (4 * (i % 17) + 3)}]
        lines.append(line)
    return lines


def output_usage(client: OpenAI, file_id: str | None) -> tuple[int, int, int]:
    """(lines, input tokens, output tokens) summed over the output file's lines."""
    lines = read_lines(client, file_id)
    usages = [line["response"]["body"]["usage"] for line in lines]
    return len(lines), sum(u["prompt_tokens"] for u in usages), sum(u["completion_tokens"] for u in usages)


def check_counted_once(client: OpenAI, batch_id: str, count: int) -> None:
    done = client.batches.retrieve(batch_id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (count, count)
    assert done.usage is not None
    assert output_usage(client, done.output_file_id) == (
        count,
        done.usage.input_tokens,
        done.usage.output_tokens,
    )


def attempts(upstream: FakeUpstreamProcess, tag: str, count: int) -> list[int]:
    by_key = upstream.stats()["by_key"]
    return [by_key.get(f"{tag}-{i}", 0) for i in range(count)]


def test_usage_is_counted_once_through_retries_and_a_kill(
    tmp_path: Path, upstream: FakeUpstreamProcess
) -> None:
    count, tag = 300, uuid.uuid4().hex[:8]
    crashing = write_config(tmp_path / "crash.toml", upstream.base_url, crash_at="execution.flushed:3")
    server = OvernightServer(tmp_path / "data", crashing)
    server.start()
    try:
        client = make_client(server.base_url)
        file = upload(client, lines_with_retries(tag, count))
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert server.process is not None
        assert server.process.wait(timeout=TIMEOUT_S) == -9, server.log()  # killed mid-batch
        server.config = write_config(tmp_path / "normal.toml", upstream.base_url)
        server.start()
        wait_for(client, batch.id, timeout=TIMEOUT_S)
        check_counted_once(client, batch.id, count)
        runs = attempts(upstream, tag, count)
        assert all(runs[i] >= 2 for i in range(0, count, 3))  # the failed first attempts were retried
        # the cost figures read the same counters
        page = client.get(
            f"/organization/costs?start_time={int(time.time()) - 3600}&group_by[]=line_item", cast_to=dict
        )
        [result] = [r for bucket in page["data"] for r in bucket["results"]]
        done = client.batches.retrieve(batch.id)
        assert done.usage is not None
        assert result["usage"]["input_tokens"] == done.usage.input_tokens
        assert result["usage"]["output_tokens"] == done.usage.output_tokens
    finally:
        server.stop()


def test_usage_is_counted_once_when_a_shard_is_taken_over(
    tmp_path: Path, database_url: str, seaweed: SeaweedS3
) -> None:
    count, tag = 400, uuid.uuid4().hex[:8]
    fake = FakeUpstreamProcess("--latency-ms", "15")
    try:
        up = start_cluster(
            tmp_path,
            database_url,
            seaweed,
            fake.base_url,
            workers=2,
            settings="lease_s = 3\nshard_lines = 50\nworker_max_shards = 2\n",
            max_concurrency=8,
        )
        with running_cluster(up) as cluster:
            client = make_client(cluster.url("api-1") + "/v1")
            file = upload(client, lines_with_retries(tag, count))
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_for(
                client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed >= 60
            )
            os.kill(pid_of(cluster, "worker-1"), signal.SIGKILL)  # its shards are taken over by worker-2
            wait_for(client, batch.id, timeout=TIMEOUT_S)
            check_counted_once(client, batch.id, count)
            assert all(runs >= 1 for runs in attempts(fake, tag, count))
            assert sum(attempts(fake, tag, count)) > count  # retries (and re-runs after the kill) happened
    finally:
        fake.stop()
