"""Overnight as a cluster on PostgreSQL and S3 (SeaweedFS): API servers and workers as separate
processes, started by the very script the deployment guide gives users (deploy/local_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from acceptance.conftest import chat_line, make_client, read_lines, upload, wait_for
from support import postgres
from support.seaweed import SeaweedS3
from support.server import FakeUpstreamProcess, http_json

SCRIPT = Path(__file__).parents[2] / "deploy" / "local_cluster.py"
TIMEOUT_S = 120.0


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive ports that are free now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first: int = probe.getsockname()[1]
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]
    processes: list[dict[str, Any]]

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=180
        )

    def url(self, name: str) -> str:
        port = next(entry["port"] for entry in self.processes if entry["name"] == name)
        return f"http://127.0.0.1:{port}"

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")


def start_cluster(
    tmp_path: Path,
    database_url: str,
    seaweed: SeaweedS3,
    upstream_url: str,
    *,
    workers: int,
    settings: str = "",
    max_concurrency: int = 16,
) -> Cluster:
    config = tmp_path / "overnight.toml"
    config.write_text(
        "worker_poll_interval_s = 0.2\nresult_flush_interval_s = 0.02\nlocal_models = false\n"
        f"{settings}"
        f'[[backends]]\nname = "fake"\nbase_url = "{upstream_url}"\nmodels = ["fake-*"]\n'
        f"max_concurrency = {max_concurrency}\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OVERNIGHT_", "AWS_"))}
    env |= {
        "OVERNIGHT_DATABASE_URL": database_url,
        "OVERNIGHT_BLOB_URL": f"s3://{seaweed.bucket}/cluster-{uuid.uuid4().hex[:8]}",
        "AWS_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_REGION": seaweed.region,
        "AWS_ACCESS_KEY_ID": seaweed.access_key_id,
        "AWS_SECRET_ACCESS_KEY": seaweed.secret_access_key,
    }
    folder = tmp_path / "cluster"
    cluster = Cluster(folder, env, [])
    port = consecutive_free_ports(2 + workers)
    started = cluster.script(
        "up",
        str(folder),
        "--api-servers",
        "2",
        "--workers",
        str(workers),
        "--port",
        str(port),
        "--config",
        str(config),
    )
    assert started.returncode == 0, started.stderr
    cluster.processes = json.loads((folder / "cluster.json").read_text())["processes"]
    return cluster


@contextlib.contextmanager
def running_cluster(cluster: Cluster) -> Iterator[Cluster]:
    try:
        yield cluster
    finally:
        stopped = cluster.script("down", str(cluster.folder))
        assert stopped.returncode == 0, stopped.stderr


@pytest.fixture
def cluster(
    tmp_path: Path, database_url: str, seaweed: SeaweedS3, upstream: FakeUpstreamProcess
) -> Iterator[Cluster]:
    with running_cluster(start_cluster(tmp_path, database_url, seaweed, upstream.base_url, workers=2)) as up:
        yield up


def test_batches_run_across_api_servers_and_workers(cluster: Cluster) -> None:
    first, second = make_client(cluster.url("api-1") + "/v1"), make_client(cluster.url("api-2") + "/v1")
    created = []
    for index, (api, other) in enumerate([(first, second), (second, first), (first, second)]):
        names = [f"b{index}-{i}" for i in range(30)]
        file = upload(api, [chat_line(name) for name in names])
        batch = api.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert other.batches.retrieve(batch.id).id == batch.id  # visible at once on the other server
        assert other.files.retrieve(file.id).bytes == file.bytes
        created.append((batch.id, names))
    for batch_id, names in created:
        done = wait_for(second, batch_id, timeout=TIMEOUT_S)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (len(names), 0)
        output = read_lines(first, done.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(names)  # each exactly once
    for name in ("api-1", "api-2", "worker-1", "worker-2"):
        health = http_json("GET", cluster.url(name) + "/health")
        assert health == {"status": "ok", "store": "ok", "blobs": "ok"}
    assert "role=api id=" in cluster.log("api-1")
    assert "role=worker id=" in cluster.log("worker-1")
    assert "PostgreSQL 127.0.0.1" in cluster.log("worker-2")
    for name in ("api-1", "worker-1"):
        assert cluster.env["AWS_SECRET_ACCESS_KEY"] not in cluster.log(name)
    status = cluster.script("status", str(cluster.folder))
    assert status.stdout.count("healthy") == 4, status.stdout


def pid_of(cluster: Cluster, name: str) -> int:
    state = json.loads((cluster.folder / "cluster.json").read_text())
    pid: int = next(entry["pid"] for entry in state["processes"] if entry["name"] == name)
    return pid


async def terminate_connections(database_url: str, pid: int) -> int:
    """pg_terminate_backend on every connection of process `pid` (its application_name): the
    database connection lost mid-batch."""
    found = postgres.server()
    conn = await asyncpg.connect(found.admin_dsn)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"overnight-{pid}",
        )
    finally:
        await conn.close()
    return len(rows)


def test_faults_lose_nothing_and_the_limit_holds_across_workers(
    tmp_path: Path, database_url: str, seaweed: SeaweedS3
) -> None:
    limit = 8
    fake = FakeUpstreamProcess("--latency-ms", "15")
    try:
        up = start_cluster(
            tmp_path,
            database_url,
            seaweed,
            fake.base_url,
            workers=3,
            settings="lease_s = 4\nshard_lines = 100\nworker_max_shards = 2\n",
            max_concurrency=limit,
        )
        with running_cluster(up) as cluster:
            first, second = (
                make_client(cluster.url("api-1") + "/v1"),
                make_client(cluster.url("api-2") + "/v1"),
            )
            tag = uuid.uuid4().hex[:8]
            batches: dict[str, list[str]] = {}
            for index, api in enumerate((first, second, first)):
                names = [f"f{index}-{i:04d}" for i in range(500)]
                lines = [chat_line(name, fake={"key": f"{tag}-{name}"}) for name in names]
                file = upload(api, lines)
                batch = api.batches.create(
                    input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                batches[batch.id] = names
            some = next(iter(batches))
            wait_for(
                first, some, lambda b: b.request_counts is not None and b.request_counts.completed >= 100
            )
            os.kill(pid_of(cluster, "worker-1"), signal.SIGKILL)  # a worker dies mid-batch
            restarted = cluster.script("restart", str(cluster.folder), "api-2")  # an API server restarts
            assert restarted.returncode == 0, restarted.stderr
            lost = asyncio.run(terminate_connections(database_url, pid_of(cluster, "worker-2")))
            assert lost >= 1  # a worker loses its database connections mid-batch
            deadline = time.monotonic() + TIMEOUT_S
            for batch_id, names in batches.items():
                done = wait_for(second, batch_id, timeout=max(1.0, deadline - time.monotonic()))
                assert done.status == "completed", done
                assert done.request_counts is not None
                assert (done.request_counts.total, done.request_counts.completed) == (len(names), len(names))
                output = read_lines(first, done.output_file_id)
                assert sorted(line["custom_id"] for line in output) == names  # each exactly once
                assert len(output) == len(names)
            stats = fake.stats()
            assert stats["max_in_flight"] <= limit  # across all three workers, through the faults
            runs = [stats["by_key"].get(f"{tag}-{name}", 0) for names in batches.values() for name in names]
            again = sum(1 for count in runs if count > 1)
            assert min(runs) >= 1
            # Only the dead worker's requests in flight (at most the whole limit) and the results it had
            # not yet recorded (one flush interval of its share of the rate, a few) run twice.
            assert again <= limit + 20, again
            for name in ("worker-2", "worker-3"):
                assert "Traceback" not in cluster.log(name)  # the lost connections were ridden out
    finally:
        fake.stop()
