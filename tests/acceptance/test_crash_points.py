"""kill -9 at named points of every phase, restart, and every custom_id still lands exactly once.

The server kills itself (SIGKILL, no cleanup) through the test-only `crash_at` setting; it is then
restarted on the same data without it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, make_client, read_lines, upload, wait_for, write_config
from overnight.blobs.local import TEMP_PREFIX
from support.server import FakeUpstreamProcess, OvernightServer

DEATH_TIMEOUT_S = 120.0


def restartable(tmp_path: Path, upstream: FakeUpstreamProcess, crash_at: str) -> OvernightServer:
    config = write_config(tmp_path / "crash.toml", upstream.base_url, crash_at=crash_at)
    server = OvernightServer(tmp_path / "data", config)
    server.start()
    return server


def restart_without_crash(server: OvernightServer, tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    assert server.process is not None
    assert server.process.wait(timeout=DEATH_TIMEOUT_S) == -9, server.log()
    server.config = write_config(tmp_path / "normal.toml", upstream.base_url)
    server.start()


def check_exactly_once(client: OpenAI, batch_id: str, custom_ids: list[str]) -> tuple[list[Any], list[Any]]:
    batch = client.batches.retrieve(batch_id)
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    seen = Counter(line["custom_id"] for line in output + errors)
    assert sorted(seen) == sorted(custom_ids)
    assert set(seen.values()) == {1}
    assert batch.request_counts is not None
    assert batch.request_counts.total == len(custom_ids)
    assert batch.request_counts.completed == len(output)
    return output, errors


def lines_for(count: int, **fake: Any) -> list[dict[str, Any]]:
    lines = [chat_line(f"c{i}", fake={"delay_ms": 10, **fake}) for i in range(count)]
    lines.append(chat_line("bad", fake={"status": 400}))
    return lines


@pytest.mark.parametrize(
    "point", ["validation.finished", "execution.flushed:2", "finalization.written", "finalization.moved"]
)
def test_crash_during_a_batch(tmp_path: Path, upstream: FakeUpstreamProcess, point: str) -> None:
    server = restartable(tmp_path, upstream, point)
    try:
        client = make_client(server.base_url)
        lines = lines_for(200)
        file = upload(client, lines)
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        restart_without_crash(server, tmp_path, upstream)
        done = wait_for(client, batch.id)
        assert done.status == "completed"
        output, errors = check_exactly_once(client, batch.id, [line["custom_id"] for line in lines])
        assert [line["custom_id"] for line in errors] == ["bad"]
        assert len(output) == 200
        assert done.request_counts is not None
        assert done.request_counts.failed == 1
        # the result files being written at the kill were discarded at the restart
        assert not list((tmp_path / "data").rglob(f"{TEMP_PREFIX}*"))
    finally:
        server.stop()


@pytest.mark.parametrize("point", ["ending.marked", "finalization.written", "finalization.moved"])
def test_crash_while_cancelling(tmp_path: Path, upstream: FakeUpstreamProcess, point: str) -> None:
    server = restartable(tmp_path, upstream, point)
    try:
        client = make_client(server.base_url)
        fast = [chat_line(f"f{i}") for i in range(5)]
        slow = [chat_line(f"s{i}", fake={"hang": True}) for i in range(20)]
        file = upload(client, fast + slow)
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_for(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed == 5)
        client.batches.cancel(batch.id)
        restart_without_crash(server, tmp_path, upstream)
        done = wait_for(client, batch.id)
        assert done.status == "cancelled"
        output, errors = check_exactly_once(client, batch.id, [line["custom_id"] for line in fast + slow])
        assert {line["custom_id"] for line in output} == {f"f{i}" for i in range(5)}
        assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    finally:
        server.stop()


def test_crash_while_expiring(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    server = restartable(tmp_path, upstream, "ending.marked")
    try:
        client = make_client(server.base_url)
        lines = [chat_line("quick")] + [chat_line(f"h{i}", fake={"hang": True}) for i in range(10)]
        file = upload(client, lines)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="2s",  # type: ignore[arg-type]
        )
        restart_without_crash(server, tmp_path, upstream)
        done = wait_for(client, batch.id)
        assert done.status == "expired"
        output, errors = check_exactly_once(client, batch.id, [line["custom_id"] for line in lines])
        assert {line["error"]["code"] for line in errors} == {"batch_expired"}
        assert [line["custom_id"] for line in output] in ([], ["quick"])
    finally:
        server.stop()


def test_crash_during_upload_keeps_nothing_half_made(tmp_path: Path, upstream: FakeUpstreamProcess) -> None:
    server = restartable(tmp_path, upstream, "upload.stored")
    try:
        client = make_client(server.base_url)
        with pytest.raises(openai.APIConnectionError):
            upload(client, [chat_line("x")])
        stored = tmp_path / "data" / "blobs" / "files"
        assert len(list(stored.iterdir())) == 1  # the crash came after the content was stored
        restart_without_crash(server, tmp_path, upstream)
        assert list(client.files.list()) == []
        assert list(stored.iterdir()) == []  # content without a record is swept at start
        assert "left without a record" in server.log()
        file = upload(client, [chat_line("x")])
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert wait_for(client, batch.id).status == "completed"
    finally:
        server.stop()
