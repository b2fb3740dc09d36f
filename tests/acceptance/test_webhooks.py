"""Webhooks end to end: the real server sends OpenAI's batch events to a real receiver on loopback, and the
official SDK's `client.webhooks.unwrap` accepts every delivery. Refused attempts are retried (and each
shows in the log and /metrics), a kill between the status change and the delivery loses nothing, and two
workers on PostgreSQL deliver each event once."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from acceptance.conftest import chat_line, make_client, upload, wait_for, write_config
from support.server import FakeUpstreamProcess, OvernightServer, free_port, stop_process, wait_until_healthy
from support.webhook_receiver import BatchEvent, Received, ReceiverThread, WebhookReceiver, wait_until

SECRET = "whsec_" + base64.b64encode(b"acceptance-webhook-secret-32byte").decode()
SECRET_ENV = "OVERNIGHT_TEST_WEBHOOK_SECRET"
DEATH_TIMEOUT_S = 120.0
FAST_RETRIES: dict[str, Any] = {"webhook_retry_base_s": 0.2, "webhook_timeout_s": 5}


def webhook_tables(*endpoints: dict[str, Any]) -> str:
    lines = []
    for endpoint in endpoints:
        lines.append("[[webhooks]]")
        lines += [f"{key} = {_toml(value)}" for key, value in {"secret_env": SECRET_ENV, **endpoint}.items()]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    return f'"{value}"'


def config_with_webhooks(
    path: Path, upstream: FakeUpstreamProcess, *endpoints: dict[str, Any], **extra: Any
) -> Path:
    config = write_config(path, upstream.base_url, **FAST_RETRIES, **extra)
    config.write_text(config.read_text() + webhook_tables(*endpoints))
    return config


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def metric(text: str, name: str, **labels: str) -> float:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(f"{name}{{{inner}}}" if labels else name) + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def unwrap(received: Received) -> BatchEvent:
    return received.unwrap(SECRET)


def create(client: OpenAI, content: list[dict[str, Any]] | bytes, window: str = "24h") -> str:
    file = upload(client, content)
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    )
    return batch.id


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with ReceiverThread(WebhookReceiver(refuse_first={"/all": 3})) as running:
        yield running


def test_every_batch_event_is_delivered_signed_and_retried_until_taken(
    tmp_path: Path, upstream: FakeUpstreamProcess, receiver: WebhookReceiver
) -> None:
    config = config_with_webhooks(
        tmp_path / "webhooks.toml",
        upstream,
        {"url": receiver.url("/all"), "name": "all"},
        {"url": receiver.url("/failures"), "name": "failures", "events": ["batch.failed"]},
        {"url": receiver.url("/elsewhere"), "name": "elsewhere", "project": "another-project"},
    )
    server = OvernightServer(tmp_path / "data", config, env={SECRET_ENV: SECRET})
    server.start()
    try:
        client = make_client(server.base_url)
        completed = create(client, [chat_line("ok")])
        failed = create(client, b"this line is not JSON\n")
        expiring = create(client, [chat_line("h", fake={"hang": True})], window="2s")
        cancelled = create(client, [chat_line(f"c{i}", fake={"hang": True}) for i in range(3)])
        wait_for(client, cancelled, lambda b: b.status == "in_progress")
        client.batches.cancel(cancelled)
        expected = {
            completed: "batch.completed",
            failed: "batch.failed",
            expiring: "batch.expired",
            cancelled: "batch.cancelled",
        }
        for batch_id, event_type in expected.items():
            assert wait_for(client, batch_id).status == event_type.removeprefix("batch.")

        wait_until(lambda: len(receiver.delivered("/all")) == 4, "4 events delivered", describe=server.log)
        events = [unwrap(received) for received in receiver.delivered("/all")]
        assert {event.data.id: event.type for event in events} == expected
        assert all(event.object == "event" and event.id.startswith("evt_") for event in events)
        for event in events:
            batch = client.batches.retrieve(event.data.id)
            ended = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at
            assert event.created_at == ended
        # the three refused attempts were sent again: the same event id and the very same bytes
        refused = [r for r in receiver.received if r.path == "/all" and r.answered == 503]
        assert len(refused) == 3
        delivered = {r.event_id: r.body for r in receiver.delivered("/all")}
        assert all(delivered[r.event_id] == r.body for r in refused)
        assert all(unwrap(r).id == r.event_id for r in refused)  # signed as well, though refused

        assert [unwrap(r).data.id for r in receiver.delivered("/failures")] == [failed]
        assert receiver.received_on("/elsewhere") == []

        log = server.wait_for_log(f"webhook delivered event={events[-1].id}")
        attempts = [line for line in log.splitlines() if "overnight.webhooks webhook" in line]
        on_all = [line for line in attempts if "endpoint=all " in line]
        assert len(on_all) == len(receiver.received_on("/all")) == 7
        assert sum("attempt failed" in line and ": HTTP 503; next attempt in" in line for line in on_all) == 3
        for event in events:
            assert f"type={event.type} batch={event.data.id} endpoint=all" in log
        assert SECRET.removeprefix("whsec_") not in log

        text = metrics_text(server.port)
        assert metric(text, "overnight_webhook_attempts_total", endpoint="all", outcome="retry") == 3
        assert metric(text, "overnight_webhook_attempts_total", endpoint="all", outcome="delivered") == 4
        assert metric(text, "overnight_webhook_attempts_total", endpoint="failures", outcome="delivered") == 1
        wait_until(lambda: "overnight_webhook_pending 0" in metrics_text(server.port), "no delivery pending")
    finally:
        server.stop()


@pytest.mark.parametrize("point", ["webhook.recorded", "webhook.claimed"])
def test_a_kill_between_the_status_change_and_the_delivery_loses_no_event(
    tmp_path: Path, upstream: FakeUpstreamProcess, point: str
) -> None:
    with ReceiverThread(WebhookReceiver()) as receiver:
        endpoint = {"url": receiver.url("/hook"), "name": "hook"}
        crashing = config_with_webhooks(tmp_path / "crash.toml", upstream, endpoint, crash_at=point)
        server = OvernightServer(tmp_path / "data", crashing, env={SECRET_ENV: SECRET})
        server.start()
        try:
            client = make_client(server.base_url)
            batch_id = create(client, [chat_line("only")])
            assert server.process is not None
            assert server.process.wait(timeout=DEATH_TIMEOUT_S) == -9, server.log()
            recorded = re.search(
                rf"webhook event recorded id=(evt_\w+) type=batch.completed batch={batch_id}", server.log()
            )
            assert recorded is not None, server.log()
            event_id = recorded.group(1)
            if point == "webhook.claimed":
                assert receiver.received == []  # killed after the lease, before the send

            server.config = config_with_webhooks(tmp_path / "normal.toml", upstream, endpoint)
            server.start()
            wait_until(
                lambda: len(receiver.delivered("/hook")) == 1,
                "the event after the restart",
                describe=server.log,
            )
            (delivered,) = receiver.delivered("/hook")
            event = unwrap(delivered)
            assert (event.id, event.type, event.data.id) == (event_id, "batch.completed", batch_id)
            assert {r.event_id for r in receiver.received} == {event_id}
            assert client.batches.retrieve(batch_id).status == "completed"
            attempt = 2 if point == "webhook.claimed" else 1  # the claimed attempt counts
            server.wait_for_log(
                f"webhook delivered event={event_id} type=batch.completed batch={batch_id}"
                f" endpoint=hook attempt={attempt}: HTTP 200"
            )
        finally:
            server.stop()


@pytest.mark.parametrize(
    ("endpoint", "secret", "says"),
    [
        ({"url": "hooks.example.com/overnight"}, SECRET, "setting 'webhooks[0].url'"),
        (
            {"url": "https://hooks.example.com/x", "events": ["batch.done"]},
            SECRET,
            "setting 'webhooks[0].events'",
        ),
        (
            {"url": "https://hooks.example.com/x"},
            None,
            "environment variable OVERNIGHT_TEST_WEBHOOK_SECRET is not set",
        ),
        (
            {"url": "https://hooks.example.com/x"},
            "sk-live-0123456789abcdef",
            "does not hold whsec_ followed by base64",
        ),
    ],
)
def test_a_bad_webhook_setting_stops_start_up_with_one_clear_line(
    tmp_path: Path, endpoint: dict[str, Any], secret: str | None, says: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(webhook_tables(endpoint))
    env = {**server_env(), **({SECRET_ENV: secret} if secret else {})}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "overnight",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("overnight: error: setting 'webhooks[0]"), done.stderr
    assert says in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    if secret:
        assert secret.removeprefix("whsec_") not in done.stderr


# -- two workers on PostgreSQL ------------------------------------------------------------------


def test_two_workers_on_postgres_deliver_each_event_once(
    tmp_path: Path, upstream: FakeUpstreamProcess, database_url: str
) -> None:
    with ReceiverThread(WebhookReceiver(refuse_first={"/hook": 4})) as receiver:
        config = config_with_webhooks(
            tmp_path / "cluster.toml",
            upstream,
            {"url": receiver.url("/hook"), "name": "hook"},
            local_models=False,
        )
        env = {"OVERNIGHT_DATABASE_URL": database_url, SECRET_ENV: SECRET}
        common = ["--data-dir", str(tmp_path / "data"), "--config", str(config)]  # one machine: shared blobs
        api_port, worker_ports = free_port(), [free_port(), free_port()]
        commands = {
            "api": ["serve", "--no-worker", "--port", str(api_port)],
            **{f"worker-{n}": ["worker", "--metrics-port", str(port)] for n, port in enumerate(worker_ports)},
        }
        processes: dict[str, subprocess.Popen[bytes]] = {}
        logs = {name: tmp_path / f"{name}.log" for name in commands}
        try:
            for name, args in commands.items():
                with logs[name].open("wb") as log:
                    processes[name] = subprocess.Popen(
                        [sys.executable, "-m", "overnight", *args, *common],
                        env={**server_env(), **env},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
            for name, port in zip(commands, [api_port, *worker_ports], strict=True):
                wait_until_healthy(f"http://127.0.0.1:{port}/health", processes[name])
            client = make_client(f"http://127.0.0.1:{api_port}/v1")
            batch_ids = [create(client, [chat_line(f"b{n}-{i}") for i in range(3)]) for n in range(8)]
            for batch_id in batch_ids:
                assert wait_for(client, batch_id).status == "completed"

            def describe() -> str:
                return "\n".join(logs[name].read_text(errors="replace")[-1500:] for name in logs)

            wait_until(lambda: len(receiver.delivered("/hook")) >= 8, "8 events delivered", describe=describe)
            events = [unwrap(received) for received in receiver.delivered("/hook")]
            assert Counter(event.id for event in events).most_common(1)[0][1] == 1  # each event once
            assert sorted(event.data.id for event in events) == sorted(batch_ids)
            # each delivery leased by one worker at a time: no event was ever sent by two at once
            per_worker = [
                set(re.findall(r"webhook delivered event=(evt_\w+)", logs[f"worker-{n}"].read_text()))
                for n in range(2)
            ]
            assert per_worker[0].isdisjoint(per_worker[1])
            assert per_worker[0] | per_worker[1] == {event.id for event in events}
            delivered = sum(
                metric(
                    metrics_text(port),
                    "overnight_webhook_attempts_total",
                    endpoint="hook",
                    outcome="delivered",
                )
                for port in worker_ports
            )
            assert delivered == 8
            assert "webhook event recorded" not in logs["api"].read_text()  # the API server ends no batch
        finally:
            for process in processes.values():
                stop_process(process)


def server_env() -> dict[str, str]:
    """This environment without OVERNIGHT_* settings: each process gets only the test's."""
    return {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
