"""Flow control seen from outside: /metrics, backing off an overloaded upstream, riding out a dead one."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, make_client, read_lines, upload, wait_for, write_config
from support.server import FakeUpstreamProcess, OvernightServer, free_port

TIMEOUT_S = 120.0


def metrics_text(server: OvernightServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
        return text


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample; 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class StartServer(Protocol):
    def __call__(self, upstream_url: str, **settings: Any) -> OvernightServer: ...


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[StartServer]:
    servers: list[OvernightServer] = []

    def start(upstream_url: str, **settings: Any) -> OvernightServer:
        config = write_config(tmp_path / f"c{len(servers)}.toml", upstream_url, **settings)
        server = OvernightServer(tmp_path / f"data{len(servers)}", config)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def test_metrics_count_requests_and_batches(client: OpenAI, server: OvernightServer) -> None:
    file = upload(client, [chat_line(f"m{i}") for i in range(3)] + [chat_line("m-bad", fake={"status": 400})])
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(client, batch.id)
    text = metrics_text(server)
    assert metric(text, "overnight_upstream_requests_total", backend="fake", status="200") >= 3
    assert metric(text, "overnight_upstream_requests_total", backend="fake", status="400") >= 1
    assert metric(text, "overnight_request_results_total", backend="fake", result="succeeded") >= 3
    assert metric(text, "overnight_batches", status="completed") >= 1
    assert metric(text, "overnight_tokens_total", backend="fake", direction="input") > 0
    assert metric(text, "overnight_upstream_latency_seconds_count", backend="fake") >= 4
    assert "overnight_upstream_in_flight" in text
    assert "overnight_requests_waiting" in text


def test_backs_off_an_upstream_that_refuses_above_a_threshold(own_server: StartServer) -> None:
    fake = FakeUpstreamProcess("--max-concurrency-before-429", "4", "--latency-ms", "20", "--no-track-keys")
    try:
        server = own_server(fake.base_url, max_attempts=30)
        client = make_client(server.base_url)
        total = 300
        file = upload(client, [chat_line(f"o{i}") for i in range(total)])
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_for(client, batch.id, timeout=TIMEOUT_S)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (total, 0)
        refused = fake.stats()["by_status"].get("429", 0)
        # A fixed window of 16 would see about 3 refusals per success (12 of every 16 in flight);
        # the adaptive window settles around the threshold, probing it about once per round trip.
        assert refused < 2 * total
        assert metric(metrics_text(server), "overnight_concurrency_window", backend="fake") <= 8
    finally:
        fake.stop()


def test_a_dead_upstream_pauses_work_instead_of_failing_it(own_server: StartServer) -> None:
    port = free_port()
    server = own_server(f"http://127.0.0.1:{port}/v1", max_attempts=2)
    client = make_client(server.base_url)
    file = upload(client, [chat_line(f"d{i}") for i in range(6)])
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while metric(metrics_text(server), "overnight_backend_waiting_batches", backend="fake") != 1:
        assert time.monotonic() < deadline, "the circuit breaker never opened"
        time.sleep(0.05)
    assert client.batches.retrieve(batch.id).status == "in_progress"
    text = metrics_text(server)  # the stall is visible: the breaker, and who waits on it
    assert metric(text, "overnight_circuit_open", backend="fake") == 1
    assert metric(text, "overnight_circuit_changes_total", backend="fake", state="open") >= 1
    assert metric(text, "overnight_requests_waiting_for_backend", backend="fake") >= 1
    assert f"wait for it: {batch.id}" in server.log()
    fake = FakeUpstreamProcess(port=port)
    try:
        done = wait_for(client, batch.id, timeout=TIMEOUT_S)
    finally:
        fake.stop()
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    assert len(read_lines(client, done.output_file_id)) == 6
    assert "circuit closed after" in server.log()
    assert metric(metrics_text(server), "overnight_backend_waiting_batches", backend="fake") == 0


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param({"status": 500}, id="json-500"),
        pytest.param({"status": 500, "text_body": "Internal Server Error"}, id="plain-text-500"),
        pytest.param({"status": 400}, id="400"),
    ],
)
def test_lines_the_upstream_always_refuses_do_not_hold_up_the_backend(
    own_server: StartServer, refusal: dict[str, Any]
) -> None:
    fake = FakeUpstreamProcess()
    try:
        server = own_server(fake.base_url, max_attempts=3)
        client = make_client(server.base_url)
        tag = "-".join(str(value) for value in refusal.values())[:20]
        bad = [chat_line(f"bad{i}", fake={"key": f"{tag}-bad{i}", **refusal}) for i in range(5)]
        first = client.batches.create(
            input_file_id=upload(client, bad).id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        second = client.batches.create(
            input_file_id=upload(client, [chat_line(f"good{i}") for i in range(10)]).id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        healthy = wait_for(client, second.id, timeout=TIMEOUT_S)
        refused = wait_for(client, first.id, timeout=TIMEOUT_S)
        stats = fake.stats()
    finally:
        fake.stop()
    assert healthy.status == "completed"
    assert healthy.request_counts is not None
    assert (healthy.request_counts.completed, healthy.request_counts.failed) == (10, 0)
    assert refused.status == "completed"
    assert refused.request_counts is not None
    assert (refused.request_counts.completed, refused.request_counts.failed) == (0, 5)
    errors = read_lines(client, refused.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == [f"bad{i}" for i in range(5)]
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == refusal["status"]
        message = line["response"]["body"]["error"]["message"]
        assert refusal.get("text_body", "The fake upstream was told to answer") in message
    budget = 1 if refusal["status"] == 400 else 3  # a 400 is final; a 500 is tried max_attempts times
    assert all(stats["by_key"][f"{tag}-bad{i}"] == budget for i in range(5))
    log = server.wait_for_log(f"batch completed id={refused.id}")  # logged just after the change
    assert "5/5 done (0 succeeded, 5 failed)" in log
