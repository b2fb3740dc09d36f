"""Overnight as a cluster on PostgreSQL and S3 (SeaweedFS): API servers and workers as separate
processes, started by the very script the deployment guide gives users (deploy/local_cluster.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@pytest.fixture
def database_url() -> Iterator[str]:
    found = postgres.server()
    name = asyncio.run(found.create_database())  # empty: `overnight migrate` builds the schema
    try:
        yield found.dsn(name)
    finally:
        asyncio.run(found.drop_database(name))


@pytest.fixture
def cluster(
    tmp_path: Path, database_url: str, seaweed: SeaweedS3, upstream: FakeUpstreamProcess
) -> Iterator[Cluster]:
    config = tmp_path / "overnight.toml"
    config.write_text(
        "worker_poll_interval_s = 0.2\nresult_flush_interval_s = 0.02\nlocal_models = false\n"
        f'[[backends]]\nname = "fake"\nbase_url = "{upstream.base_url}"\nmodels = ["fake-*"]\n'
        "max_concurrency = 16\n"
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
    port = consecutive_free_ports(4)
    started = cluster.script(
        "up",
        str(folder),
        "--api-servers",
        "2",
        "--workers",
        "2",
        "--port",
        str(port),
        "--config",
        str(config),
    )
    assert started.returncode == 0, started.stderr
    cluster.processes = json.loads((folder / "cluster.json").read_text())["processes"]
    try:
        yield cluster
    finally:
        stopped = cluster.script("down", str(folder))
        assert stopped.returncode == 0, stopped.stderr


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
