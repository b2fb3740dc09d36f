"""The chaos run of test_chaos.py on the multi-worker setup: two API servers and two workers on
PostgreSQL and S3 (SeaweedFS), the batch in shards that both workers take. Same checks
(chaos_checks.py); OVERNIGHT_CHAOS_CLUSTER_LINES makes it longer."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from acceptance.chaos_checks import (
    RSS_GROWTH_LIMIT_MB,
    SEED,
    Watch,
    chaos_lines,
    chaos_settings,
    check_results,
    read_results,
    report,
    wait_done,
)
from acceptance.conftest import make_client, upload
from acceptance.test_cluster import running_cluster, start_cluster
from support.chaos_upstream import ChaosUpstream
from support.seaweed import SeaweedS3

LINES = int(os.environ.get("OVERNIGHT_CHAOS_CLUSTER_LINES", "400"))
NAMES = ("api-1", "api-2", "worker-1", "worker-2")


def test_a_chaotic_upstream_loses_nothing_across_workers(
    tmp_path: Path, database_url: str, seaweed: SeaweedS3
) -> None:
    settings = {**chaos_settings(), "shard_lines": max(50, LINES // 6)}
    toml = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    with ChaosUpstream(seed=SEED).running() as chaos:
        up = start_cluster(tmp_path, database_url, seaweed, chaos.base_url, workers=2, settings=toml)
        with running_cluster(up) as cluster:
            first = make_client(cluster.url("api-1") + "/v1")
            second = make_client(cluster.url("api-2") + "/v1")
            lines = chaos_lines(LINES, "many")
            file = upload(first, lines)
            started = time.monotonic()
            batch = first.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            pids = [entry["pid"] for entry in cluster.processes if entry["name"] in NAMES]
            health = [cluster.url(name) + "/health" for name in NAMES]
            with Watch(second, health, pids, batch.id) as watch:
                done = wait_done(first, batch.id, timeout_s=600)
            seconds = time.monotonic() - started
            assert done.status == "completed", done
            output = read_results(second, done.output_file_id)
            errors = read_results(second, done.error_file_id)
            logs = {name: cluster.log(name) for name in NAMES}
        tally = check_results(chaos, [line["custom_id"] for line in lines], output, errors)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (tally.succeeded, tally.failed)
    print("\n".join(report("chaos, 2 API servers + 2 workers", chaos, tally, watch, seconds)))
    assert not watch.failures, watch.failures[:5]
    for figures in watch.growth_mb().values():
        assert figures[-1] < RSS_GROWTH_LIMIT_MB, figures
    for name, log in logs.items():
        assert "Traceback" not in log, (name, log[-3000:])
    for name in ("worker-1", "worker-2"):
        assert "upstream errors backend=fake" in logs[name]  # both workers ran shards of the batch
    assert chaos.unmarked == 0
