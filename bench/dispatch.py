"""1. Dispatch: a chat batch against nginx, end to end through the API, against the bare client."""

from __future__ import annotations

from pathlib import Path

from .baseline import BareResult, bare_client
from .client import BatchRun, run_batch
from .nginx import Nginx
from .procs import Overnight, Profiler
from .report import Section, cores, ms, rate, ratio
from .workload import write_chat_file

GOAL = 0.8
PHASES = ("upload", "create", "validation", "dispatch", "finalization", "noticed", "download")


async def run(work: Path, requests: int, concurrency: int, profile: Path | None = None) -> Section:
    path = work / "dispatch.jsonl"
    bodies = write_chat_file(path, requests)
    with Nginx() as nginx:
        watch = {"nginx": nginx.pids}
        url = nginx.base_url + "/chat/completions"
        bare = [await bare_client(url, bodies, concurrency, watch)]
        wider = await bare_client(url, bodies, 2 * concurrency, watch)
        with Overnight(work, "dispatch", nginx.base_url, concurrency) as server, Profiler(server, profile):
            batch = await run_batch(server, path, requests, watch)
        bare.append(await bare_client(url, bodies, concurrency, watch))
    path.unlink()
    return _section(requests, concurrency, bare, wider, batch)


def _section(
    requests: int, concurrency: int, bare: list[BareResult], wider: BareResult, batch: BatchRun
) -> Section:
    best = max(bare, key=lambda b: b.rps)
    section = Section(
        "dispatch",
        f"1. dispatch: {requests:,} chat requests, instant upstream (nginx, 1 worker), "
        f"concurrency {concurrency}",
    )
    runs = " / ".join(f"{b.rps:,.0f}" for b in bare)
    section.add(f"bare aiohttp client, c={concurrency} (best of {runs})", rate(best.rps))
    section.add(f"bare aiohttp client, c={2 * concurrency}", rate(wider.rps))
    end_to_end = batch.rps / best.rps
    section.add("Overnight end to end (upload -> output downloaded)", rate(batch.rps))
    section.add("  as a share of the bare client", ratio(end_to_end), f">= {GOAL}", end_to_end >= GOAL)
    dispatch_s = batch.phase_s("dispatch")
    if dispatch_s:
        section.add("Overnight dispatch phase alone", rate(requests / dispatch_s))
        section.add("  as a share of the bare client", ratio(requests / dispatch_s / best.rps))
    for name in PHASES:
        section.add(f"  phase: {name}", ms(batch.phases_ms.get(name)))
    section.add("  total", ms(batch.total_s * 1000))
    check = batch.check
    section.add(
        "output file: lines / missing / duplicate / non-200",
        f"{check.lines:,} / {check.missing} / {check.duplicates} / {check.not_200}",
        "complete",
        check.ok and check.lines == requests and batch.error_lines == 0,
    )
    section.add("server peak RSS (VmHWM)", f"{batch.peak_rss_mb:,.0f} MB")
    section.notes.append(f"cores used, bare client c={concurrency}: {cores(best.cores)}")
    section.notes.append(f"cores used, bare client c={2 * concurrency}: {cores(wider.cores)}")
    section.notes.append(f"cores used, Overnight run: {cores(batch.cores)}")
    nginx_max = max(b.cores.get("nginx", 0.0) for b in [*bare, wider])
    verdict = "is NOT" if nginx_max < 0.8 else "MAY BE"
    section.notes.append(
        f"nginx {verdict} the bottleneck: its worker peaked at {nginx_max:.2f} of a core while the bare "
        f"client used {best.cores.get('bench client', 0.0):.2f}; doubling the client's concurrency changed "
        f"its rate by {(wider.rps / best.rps - 1) * 100:+.0f}%"
    )
    section.data = {
        "requests": requests,
        "concurrency": concurrency,
        "bare": [vars(b) | {"rps": b.rps} for b in bare],
        "bare_wider": vars(wider) | {"rps": wider.rps},
        "overnight": batch.summary(),
        "ratio_end_to_end": end_to_end,
        "goal": GOAL,
        "nginx_peak_cores": nginx_max,
    }
    return section
