"""2. Latency-bound throughput: a batch at a 50 ms upstream against the ideal concurrency / latency.

The upstream is nginx answering the fixed body after `echo_sleep` (the echo module), cheap enough that it
is not what limits the run; where nginx or its echo module cannot be had, the Python fake upstream
(tests/support/fake_upstream.py --latency-ms), which costs a core of its own at these rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .baseline import bare_client
from .client import run_batch
from .dispatch import PHASES
from .nginx import Nginx
from .procs import FakeUpstream, Overnight
from .report import Section, cores, ms, rate, ratio
from .workload import write_chat_file

GOAL = 0.95


def _upstream(latency_ms: float) -> tuple[Nginx | FakeUpstream, str]:
    """nginx with echo_sleep, or the Python fake upstream where that cannot start; and its description."""
    try:
        return Nginx(latency_ms=latency_ms), "nginx + echo_sleep"
    except Exception as exc:
        print(
            f"bench: latency: nginx with echo_sleep unavailable ({exc}); using the Python fake upstream",
            file=sys.stderr,
            flush=True,
        )
        fake = FakeUpstream("--latency-ms", str(latency_ms), "--no-track-keys")
        return fake, "tests/support/fake_upstream.py, the fallback: nginx with echo_sleep could not start"


async def run(work: Path, requests: int, concurrency: int, latency_ms: float) -> Section:
    path = work / "latency.jsonl"
    bodies = write_chat_file(path, requests)
    ideal = concurrency / (latency_ms / 1000)
    upstream, kind = _upstream(latency_ms)
    print(f"bench: latency: upstream is {kind}", file=sys.stderr, flush=True)
    with upstream:
        watch = {"nginx" if isinstance(upstream, Nginx) else "fake upstream": upstream.pids}
        bare = await bare_client(upstream.base_url + "/chat/completions", bodies, concurrency, watch)
        with Overnight(work, "latency", upstream.base_url, concurrency) as server:
            batch = await run_batch(server, path, requests, watch)
    path.unlink()
    section = Section(
        "latency",
        f"2. latency-bound: {requests:,} requests, {latency_ms:g} ms upstream ({kind}), "
        f"max_concurrency {concurrency}; ideal {concurrency} / {latency_ms / 1000:g} s = {ideal:,.0f} req/s",
    )
    share = batch.rps / ideal
    section.add("bare aiohttp client (reference)", rate(bare.rps))
    section.add("  as a share of ideal", ratio(bare.rps / ideal))
    section.add("Overnight, whole batch (upload -> output downloaded)", rate(batch.rps))
    section.add("  as a share of ideal", ratio(share), f">= {GOAL}", share >= GOAL)
    section.add("  as a share of the bare client", ratio(batch.rps / bare.rps))
    dispatch_s = batch.phase_s("dispatch")
    if dispatch_s:
        section.add("Overnight dispatch phase alone", rate(requests / dispatch_s))
        section.add("  as a share of ideal", ratio(requests / dispatch_s / ideal))
    for name in PHASES:
        section.add(f"  phase: {name}", ms(batch.phases_ms.get(name)))
    check = batch.check
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete",
        check.ok and check.lines == requests and batch.error_lines == 0,
    )
    section.notes.append(f"cores used, bare client: {cores(bare.cores)}")
    section.notes.append(f"cores used, Overnight run: {cores(batch.cores)}")
    section.data = {
        "requests": requests,
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "upstream": kind,
        "ideal_rps": ideal,
        "bare": vars(bare) | {"rps": bare.rps},
        "overnight": batch.summary(),
        "share_of_ideal": share,
        "goal": GOAL,
    }
    return section
