"""4. Re-execution after a crash: kill -9 mid-batch, restart, count what the upstream ran twice."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from .client import Api, session
from .procs import FakeUpstream, Overnight
from .report import Section, rate
from .workload import check_output, write_chat_file

KILL_AT = 0.4  # share of the requests recorded when the server is killed
FLUSH_S = 0.05  # result_flush_interval_s, the checkpoint interval (the default, written out)


def recorded_results(data_dir: Path, batch_id: str) -> int | None:
    """Results committed in the dead server's SQLite file (a diagnostic; None if it cannot be read)."""
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(data_dir / "overnight.db")
        try:
            row = conn.execute("SELECT count(*) FROM results WHERE batch_id = ?", (batch_id,)).fetchone()
            return int(row[0])
        finally:
            conn.close()
    return None


async def run(work: Path, requests: int, concurrency: int, latency_ms: float) -> Section:
    path = work / "crash.jsonl"
    write_chat_file(path, requests, keys=True)
    kill_at = int(requests * KILL_AT)
    with FakeUpstream("--latency-ms", str(latency_ms)) as upstream:
        server = Overnight(
            work, "crash", upstream.base_url, concurrency, result_flush_interval_s=FLUSH_S
        ).start()
        try:
            async with session() as http:
                api = Api(http, server.base_url)
                uploaded = await api.upload(path)
                batch = await api.create(uploaded["id"])
                started = time.time()
                batch = await api.wait(
                    batch["id"], lambda b: b["request_counts"]["completed"] >= kill_at, poll_s=0.01
                )
                if batch["status"] != "in_progress":
                    raise RuntimeError(f"the batch was {batch['status']} before the kill; use more requests")
                server.kill9()
                killed = time.time()
            await asyncio.sleep(0.2)  # let the upstream count what reached it before the kill
            at_kill = upstream.stats()
            recorded = recorded_results(server.data_dir, batch["id"])
            server.start()
            async with session() as http:  # new connections: the old ones died with the server
                api = Api(http, server.base_url)
                batch = await api.wait(batch["id"], lambda b: False)
                output = await api.content(batch["output_file_id"]) if batch.get("output_file_id") else b""
                errors = await api.content(batch["error_file_id"]) if batch.get("error_file_id") else b""
            final = upstream.stats()
        finally:
            server.stop()
    path.unlink()
    return _section(
        requests, concurrency, latency_ms, batch, at_kill, recorded, final, output, errors, killed - started
    )


def _section(
    requests: int,
    concurrency: int,
    latency_ms: float,
    batch: dict[str, Any],
    at_kill: dict[str, Any],
    recorded: int | None,
    final: dict[str, Any],
    output: bytes,
    errors: bytes,
    run_s: float,
) -> Section:
    by_key: dict[str, int] = final["by_key"]
    extra_runs = sum(n - 1 for n in by_key.values() if n > 1)
    lines_rerun = sum(1 for n in by_key.values() if n > 1)
    never_ran = sum(1 for i in range(requests) if f"k{i}" not in by_key)
    executed_at_kill: int = at_kill["requests"]
    pace = executed_at_kill / run_s
    bound = concurrency + math.ceil(pace * FLUSH_S)
    check = check_output(output, requests)
    section = Section(
        "crash",
        f"4. crash: {requests:,} requests, {latency_ms:g} ms upstream, max_concurrency {concurrency}, "
        f"kill -9 at {KILL_AT:.0%} recorded, restart",
    )
    section.add(
        "batch status after restart", str(batch["status"]), "completed", batch["status"] == "completed"
    )
    section.add("upstream executions before the kill", f"{executed_at_kill:,}")
    if recorded is not None:
        section.add("results committed before the kill", f"{recorded:,}")
        section.add("  executed but not committed (lost at kill)", f"{executed_at_kill - recorded:,}")
    section.add("pace before the kill", rate(pace))
    section.add(
        "requests the upstream executed more than once",
        f"{extra_runs:,} (on {lines_rerun:,} lines)",
        f"<= {bound} ({concurrency} + {FLUSH_S:g} s of results)",
        extra_runs <= bound,
    )
    section.add("lines the upstream never executed", f"{never_ran:,}", "0", never_ran == 0)
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete, no duplicates",
        check.ok and check.lines == requests,
    )
    section.add("error file lines", f"{len(errors.splitlines()):,}", "0", not errors.strip())
    section.data = {
        "requests": requests,
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "flush_interval_s": FLUSH_S,
        "executed_at_kill": executed_at_kill,
        "in_flight_at_upstream_after_kill": at_kill.get("in_flight"),
        "committed_at_kill": recorded,
        "executions_total": final["requests"],
        "extra_executions": extra_runs,
        "lines_rerun": lines_rerun,
        "never_executed": never_ran,
        "bound": bound,
        "output": vars(check),
        "error_lines": len(errors.splitlines()),
        "status": batch["status"],
    }
    return section
