"""Results while a batch runs, by Doubleword's convention: `GET /v1/files/{id}/content?skip=N` (or
`offset=N`) with `X-Incomplete` and `X-Last-Line`, on the real server, read with raw HTTP as `dw stream`
and autobatcher read it, while the official SDK in strict mode sees exactly OpenAI's API."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai import OpenAI

from acceptance.conftest import TERMINAL, chat_line, make_client, read_lines, upload, wait_for, write_config
from acceptance.test_cluster import pid_of, running_cluster, start_cluster
from support.seaweed import SeaweedS3
from support.server import FakeUpstreamProcess, OvernightServer

TIMEOUT_S = 120.0


@dataclass
class Follower:
    """A client of the convention: it keeps the offset the server gave it and asks for what follows."""

    http: httpx2.Client
    base_url: str
    file_id: str
    param: str = "skip"
    offset: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    incomplete: bool = True

    def read(self, limit: int | None = None) -> int:
        """Read once from the offset; how many lines came."""
        query: dict[str, Any] = {self.param: self.offset} if self.offset else {}
        if limit is not None:
            query["limit"] = limit
        answer = self.http.get(f"{self.base_url}/files/{self.file_id}/content", params=query)
        assert answer.status_code == 200, answer.text
        got = [json.loads(line) for line in answer.text.splitlines()]
        self.lines += got
        self.incomplete = answer.headers["x-incomplete"] == "true"
        self.offset = int(answer.headers["x-last-line"])
        return len(got)

    def drain(self) -> None:
        while self.incomplete:
            if not self.read():
                time.sleep(0.05)


def raw_client(base_url: str) -> httpx2.Client:
    return httpx2.Client(headers={"Authorization": "Bearer test-key"}, timeout=30)


def progress_of(client: OpenAI, batch_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/batches/{batch_id}/progress", cast_to=dict)
    return found


def custom_ids(lines: list[dict[str, Any]]) -> list[str]:
    return [line["custom_id"] for line in lines]


def held_lines(prefix: str, count: int, *, failing: int | None = 10) -> list[dict[str, Any]]:
    """Lines the fake upstream holds until released; every `failing`-th (from the 4th) is refused with a
    400."""
    lines = []
    for i in range(count):
        knobs: dict[str, Any] = {"hold": True, **({"status": 400} if failing and i % failing == 3 else {})}
        lines.append(chat_line(f"{prefix}{i:03d}", fake=knobs))
    return lines


@pytest.fixture
def no_held(upstream: FakeUpstreamProcess) -> Iterator[None]:
    yield
    upstream.control(release=-1)


def test_a_reader_gets_each_line_once_while_the_batch_runs_and_after(
    server: OvernightServer, upstream: FakeUpstreamProcess, client: OpenAI, no_held: None
) -> None:
    lines = held_lines("run-", 60)
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    running = wait_for(client, batch.id, lambda b: b.status == "in_progress")
    assert (running.output_file_id, running.error_file_id) == (None, None)  # the Batch stays OpenAI's
    ids = progress_of(client, batch.id)["partial_results"]
    with raw_client(server.base_url) as http:
        output = Follower(http, server.base_url, ids["output_file_id"])
        errors = Follower(http, server.base_url, ids["error_file_id"], param="offset")
        read_while_running = 0
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            status = client.batches.retrieve(batch.id).status
            if status in TERMINAL:
                break
            assert time.monotonic() < deadline, "the batch did not end"
            upstream.control(release=7)
            got = output.read(limit=5) + errors.read()
            if status == "in_progress":
                read_while_running += got
                assert output.incomplete
                assert errors.incomplete
            time.sleep(0.05)
        output.drain()
        errors.drain()
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert read_while_running > 0, "nothing was read while the batch ran"
    assert 0 < len(custom_ids(output.lines)) == len(set(custom_ids(output.lines)))
    assert len(custom_ids(errors.lines)) == len(set(custom_ids(errors.lines))) == 6
    assert sorted(custom_ids(output.lines) + custom_ids(errors.lines)) == sorted(
        line["custom_id"] for line in lines
    )
    # What was read, in the order read, is the finished files line for line: reading on from an offset
    # after the end continues the same sequence.
    assert read_lines(client, done.output_file_id) == output.lines
    assert read_lines(client, done.error_file_id) == errors.lines
    assert (done.output_file_id, done.error_file_id) == (ids["output_file_id"], ids["error_file_id"])


def test_a_finished_file_is_read_by_lines_and_a_stock_download_is_unchanged(
    server: OvernightServer, client: OpenAI
) -> None:
    lines = [chat_line(f"fin-{i}") for i in range(12)]
    file = upload(client, lines)
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, batch.id)
    assert done.output_file_id is not None
    content_url = f"{server.base_url}/files/{done.output_file_id}/content"
    with raw_client(server.base_url) as http:
        whole = http.get(content_url)
        assert whole.headers["x-incomplete"] == "false"
        assert whole.headers["x-last-line"] == "12"
        assert (
            int(whole.headers["content-length"])
            == len(whole.content)
            == client.files.retrieve(done.output_file_id).bytes
        )
        assert whole.content == client.files.content(done.output_file_id).content
        every = whole.content.splitlines(keepends=True)
        window = http.get(content_url, params={"skip": 2, "limit": 3})
        assert window.content == b"".join(every[2:5])
        assert (window.headers["x-incomplete"], window.headers["x-last-line"]) == ("true", "5")
        rest = http.get(content_url, params={"offset": 5})
        assert rest.content == b"".join(every[5:])
        assert (rest.headers["x-incomplete"], rest.headers["x-last-line"]) == ("false", "12")
        # What `dw stream` does with a batch whose output_file_id appears only at the end: read it all,
        # then once more from X-Last-Line, which gives nothing more (before, every line came twice).
        again = http.get(content_url, params={"skip": whole.headers["x-last-line"]})
        assert (again.content, again.headers["x-incomplete"], again.headers["x-last-line"]) == (
            b"",
            "false",
            "12",
        )
        # An input file reads by lines too (its line count is not known up front without a limit).
        input_url = f"{server.base_url}/files/{file.id}/content"
        first = http.get(input_url, params={"limit": 4})
        assert len(first.content.splitlines()) == 4
        assert (first.headers["x-incomplete"], first.headers["x-last-line"]) == ("true", "4")
        plain = http.get(input_url)
        assert plain.headers["x-incomplete"] == "false"
        assert "x-last-line" not in plain.headers
        bad = http.get(content_url, params={"skip": "many"})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "skip"


def test_a_reader_follows_the_offset_across_a_restart(
    upstream: FakeUpstreamProcess, tmp_path: Path, no_held: None
) -> None:
    """kill -9 mid-batch: the restarted server runs the lines that had no result, and the reader goes on
    from its offset: no line twice, none missing, and the finished file is what it read."""
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    server = OvernightServer(tmp_path / "data", config)
    server.start()
    try:
        client = make_client(server.base_url)
        lines = held_lines("rs-", 80, failing=None)
        file = upload(client, lines)
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_for(client, batch.id, lambda b: b.status == "in_progress")
        ids = progress_of(client, batch.id)["partial_results"]
        with raw_client(server.base_url) as http:
            output = Follower(http, server.base_url, ids["output_file_id"])
            deadline = time.monotonic() + TIMEOUT_S
            while len(output.lines) < 20:
                assert time.monotonic() < deadline
                upstream.control(release=5)
                output.read()
                time.sleep(0.05)
            server.kill()
            upstream.control(release=-1)  # answers to a dead server: those lines run again
            server.start()
            while client.batches.retrieve(batch.id).status not in TERMINAL:
                assert time.monotonic() < deadline, "the batch did not end after the restart"
                upstream.control(release=10)
                output.read()
                time.sleep(0.05)
            output.drain()
        done = client.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert sorted(custom_ids(output.lines)) == [line["custom_id"] for line in lines]  # each once
        assert read_lines(client, done.output_file_id) == output.lines
    finally:
        server.stop()


def test_with_early_result_file_ids_a_dw_stream_loop_reads_each_line_once(
    upstream: FakeUpstreamProcess, tmp_path: Path, no_held: None
) -> None:
    """`early_result_file_ids`: the Batch carries its file ids from the start, as Doubleword's does, and
    the loop of `dw stream` (poll the batch, read its output from the offset, drain once it ends)
    streams every line once."""
    config = write_config(tmp_path / "overnight.toml", upstream.base_url, early_result_file_ids=True)
    server = OvernightServer(tmp_path / "data", config)
    server.start()
    try:
        client = make_client(server.base_url)
        lines = held_lines("dw-", 40)
        file = upload(client, lines)
        created = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert created.output_file_id is not None
        assert created.error_file_id is not None
        streamed = b""
        offset = 0
        with raw_client(server.base_url) as http:

            def read_output(file_id: str) -> tuple[bytes, int, bool]:
                url = f"{server.base_url}/files/{file_id}/content" + (f"?skip={offset}" if offset else "")
                answer = http.get(url)
                assert answer.status_code == 200
                incomplete = answer.headers.get("x-incomplete") == "true"
                return answer.content, int(answer.headers.get("x-last-line", offset)), incomplete

            deadline = time.monotonic() + TIMEOUT_S
            while True:
                batch = http.get(f"{server.base_url}/batches/{created.id}").json()
                if batch["output_file_id"]:
                    body, next_offset, _ = read_output(batch["output_file_id"])
                    if body:
                        streamed += body
                        offset = next_offset
                if batch["status"] in TERMINAL:
                    while batch["output_file_id"]:
                        body, next_offset, incomplete = read_output(batch["output_file_id"])
                        if body:
                            streamed += body
                            offset = next_offset
                        if not incomplete:
                            break
                        if not body:
                            time.sleep(0.05)
                    break
                assert time.monotonic() < deadline
                upstream.control(release=6)
                time.sleep(0.05)
        done = client.batches.retrieve(created.id)
        assert done.status == "completed"
        got = [json.loads(line)["custom_id"] for line in streamed.splitlines()]
        succeeded = [line["custom_id"] for i, line in enumerate(lines) if i % 10 != 3]
        assert sorted(got) == succeeded  # each once
        assert streamed == client.files.content(created.output_file_id).content
    finally:
        server.stop()


def test_a_reader_follows_the_offset_across_a_worker_take_over(
    tmp_path: Path, database_url: str, seaweed: SeaweedS3
) -> None:
    """A cluster on PostgreSQL + S3 (2 API servers, 2 workers): one worker is killed mid-batch and the
    other takes its shards over; a reader on an API server sees every line once, in the finished
    file's order."""
    fake = FakeUpstreamProcess("--latency-ms", "40")
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
            api = make_client(cluster.url("api-1") + "/v1")
            lines = [chat_line(f"tk-{i:04d}") for i in range(600)]
            file = upload(api, lines)
            batch = api.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            wait_for(api, batch.id, lambda b: b.status == "in_progress")
            ids = progress_of(api, batch.id)["partial_results"]
            reader_url = cluster.url("api-2") + "/v1"
            with raw_client(reader_url) as http:
                output = Follower(http, reader_url, ids["output_file_id"])
                deadline = time.monotonic() + TIMEOUT_S
                while len(output.lines) < 100:
                    assert time.monotonic() < deadline
                    output.read(limit=37)
                    time.sleep(0.05)
                os.kill(pid_of(cluster, "worker-1"), signal.SIGKILL)
                while api.batches.retrieve(batch.id).status not in TERMINAL:
                    assert time.monotonic() < deadline, "the batch did not end after the take-over"
                    output.read(limit=37)
                    time.sleep(0.05)
                output.drain()
            done = api.batches.retrieve(batch.id)
            assert done.status == "completed"
            assert sorted(custom_ids(output.lines)) == [line["custom_id"] for line in lines]  # each once
            assert read_lines(api, done.output_file_id) == output.lines
    finally:
        fake.stop()
