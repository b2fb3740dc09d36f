"""A batch through a real `overnight serve` against an upstream that misbehaves at random (seeded):
429s, 5xx, stalls, resets, truncated, non-JSON, error and trickled bodies, huge answers. The rules
checked are in chaos_checks.py. OVERNIGHT_CHAOS_LINES makes the run longer (`make fuzz`),
OVERNIGHT_CHAOS_SEED picks another seed."""

from __future__ import annotations

import os
import time
import urllib.request
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
from acceptance.conftest import make_client, upload, write_config
from support.chaos_upstream import ChaosUpstream
from support.server import OvernightServer, running

LINES = int(os.environ.get("OVERNIGHT_CHAOS_LINES", "1000"))


def test_a_chaotic_upstream_loses_nothing_and_says_what_happened(tmp_path: Path) -> None:
    with ChaosUpstream(seed=SEED).running() as chaos:
        config = write_config(tmp_path / "overnight.toml", chaos.base_url, **chaos_settings())
        with running(OvernightServer(tmp_path / "data", config)) as server:
            assert server.process is not None
            client = make_client(server.base_url)
            lines = chaos_lines(LINES, "one")
            file = upload(client, lines)
            started = time.monotonic()
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            health = f"http://127.0.0.1:{server.port}/health"
            with Watch(make_client(server.base_url), [health], [server.process.pid], batch.id) as watch:
                done = wait_done(client, batch.id, timeout_s=600)
            seconds = time.monotonic() - started
            assert done.status == "completed", done
            output = read_results(client, done.output_file_id)
            errors = read_results(client, done.error_file_id)
            with urllib.request.urlopen(health, timeout=10) as answer:
                assert answer.status == 200
            log = server.log()
        tally = check_results(chaos, [line["custom_id"] for line in lines], output, errors)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (tally.succeeded, tally.failed)
    print("\n".join(report("chaos, one server", chaos, tally, watch, seconds)))
    assert not watch.failures, watch.failures[:5]
    assert watch.probes >= 1
    for figures in watch.growth_mb().values():
        assert figures[-1] < RSS_GROWTH_LIMIT_MB, figures
    assert "Traceback" not in log, log[-3000:]
    assert chaos.unmarked == 0
