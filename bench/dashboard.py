"""The dashboard is small and fast: its pages against the API calls that return the same batches.

One `overnight serve` with an API key configured holds 2,000 batches of one project: first one finished
showcase batch of 1,000 lines (some refused by the upstream for good, so its page has error groups, a chart
and a cost), then 1,999 small batches created through the API while the fake upstream hangs, so they sit
`in_progress` and the newest page of the list is all live rows (each with its progress: the list page's
heaviest case). Signed in through the sign-in form (its cookie), the bench then sends the requests below
one after another, round robin, SAMPLES rounds after a warm-up; the figures are each page's median and p95
latency over those of the API call it shows (`GET /v1/batches?limit=50`, the page size of `/`, and
`GET /v1/batches/{id}`), measured in the same rounds. The page weight is what a browser loads for `/`:
its HTML and the stylesheet and script it links.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from overnight.http.dashboard import LIST_LIMIT
from overnight.http.dashboard_auth import COOKIE
from support.server import http_json

from .client import Api, session
from .procs import CpuMeter, FakeUpstream, Overnight
from .report import Section, cores
from .workload import chat_body, request_line, write_chat_file

KEY, PROJECT = "bench", "bench"  # client.Api's bearer token, configured as a key of project "bench"
SHOWCASE_LINES = 1_000
SHOWCASE_DELAY_MS = 400  # each showcase line's upstream latency: at 64 at once it runs ~6 s, a few samples
REFUSED = {400: 0.08, 422: 0.04}  # share of the showcase's lines the upstream refuses, by status
CREATE_CONCURRENCY = 8
WARMUP = 10
IDLE_S = 2.0  # the server's CPU with no request at all, before the measurement: what the running batches cost
PRICES = '[[prices]]\nmodel = "gpt-4o-mini*"\ninput = 0.15\ncached_input = 0.075\noutput = 0.60\n'
_ASSET = re.compile(r'<(?:link[^>]*\bhref|script[^>]*\bsrc)="(/ui/static/[^"]+)"')


@dataclass(frozen=True)
class Target:
    label: str
    path: str
    dashboard: bool  # sent with the dashboard's cookie; else with the API's bearer key
    baseline: str | None = None  # the label of the API call it is compared with
    expect: str = ""  # text the answer must hold (a page, not the sign-in form)


@dataclass
class Timings:
    ms: dict[str, list[float]] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)


def _showcase_file(path: Path) -> None:
    """SHOWCASE_LINES chat requests, each answered after SHOWCASE_DELAY_MS (so its chart has points);
    REFUSED's shares of them, spread through the file, are refused by the upstream with a status that is
    not retried, so the batch completes with an error file of two groups."""
    bounds = []
    edge = 0.0
    for status, share in REFUSED.items():
        edge += share
        bounds.append((edge, status))
    with path.open("wb") as out:
        for index in range(SHOWCASE_LINES):
            spot = (index * 0.6180339887) % 1.0  # spread the refused lines through the file
            refused = next((s for top, s in bounds if spot < top), None)
            body = msgspec.json.decode(chat_body(index))
            body["fake"] = {"delay_ms": SHOWCASE_DELAY_MS} | ({} if refused is None else {"status": refused})
            out.write(request_line(index, msgspec.json.encode(body)) + b"\n")


async def _sign_in(http: aiohttp.ClientSession, root: str) -> str:
    """The cookie value the sign-in form sets, as a browser gets it."""
    form = {"key": KEY, "next": "/"}
    headers = {"Origin": root}
    async with http.post(f"{root}/ui/signin", data=form, headers=headers, allow_redirects=False) as answer:
        if answer.status != 303 or COOKIE not in answer.cookies:
            raise RuntimeError(f"sign-in answered {answer.status} without the {COOKIE} cookie")
        return answer.cookies[COOKIE].value


async def _populate(api: Api, upstream: FakeUpstream, work: Path, batches: int) -> tuple[str, list[str]]:
    """The finished showcase batch, then `batches - 1` small ones left running; their ids."""
    showcase_path, small_path = work / "dashboard-showcase.jsonl", work / "dashboard-small.jsonl"
    _showcase_file(showcase_path)
    write_chat_file(small_path, 3)
    showcase = await api.create((await api.upload(showcase_path))["id"])
    done = await api.wait(showcase["id"], lambda b: False)
    if done["status"] != "completed" or not done["request_counts"]["failed"]:
        raise RuntimeError(f"the showcase batch ended {done['status']} with {done['request_counts']}")
    await asyncio.to_thread(_control, upstream, {"hang": True})
    small = (await api.upload(small_path))["id"]
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def create() -> str:
        async with gate:
            return str((await api.create(small))["id"])

    ids = await asyncio.gather(*(create() for _ in range(batches - 1)))
    await api.wait(ids[-1], lambda b: b["status"] != "validating", poll_s=0.2)
    showcase_path.unlink()
    small_path.unlink()
    return showcase["id"], list(ids)


def _control(upstream: FakeUpstream, knobs: dict[str, Any]) -> None:
    http_json("POST", f"{upstream.root}/_control", knobs)


def _targets(showcase: str, running: str) -> list[Target]:
    listing = f"GET /v1/batches?limit={LIST_LIMIT}"
    return [
        Target(listing, f"/v1/batches?limit={LIST_LIMIT}", False),
        Target("GET / (the batch list)", "/", True, listing, running),
        Target("GET /ui/fragments/batches (what / polls)", "/ui/fragments/batches", True, listing, running),
        Target("GET /v1/batches/{id} (finished)", f"/v1/batches/{showcase}", False),
        Target(
            "GET /ui/batches/{id} (finished)",
            f"/ui/batches/{showcase}",
            True,
            "GET /v1/batches/{id} (finished)",
            showcase,
        ),
        Target("GET /v1/batches/{id} (running)", f"/v1/batches/{running}", False),
        Target(
            "GET /ui/batches/{id} (running)",
            f"/ui/batches/{running}",
            True,
            "GET /v1/batches/{id} (running)",
            running,
        ),
        Target(
            "GET /ui/fragments/batches/{id} (what it polls)",
            f"/ui/fragments/batches/{running}",
            True,
            "GET /v1/batches/{id} (running)",
            running,
        ),
    ]


async def _measure(
    http: aiohttp.ClientSession, root: str, cookie: str, targets: list[Target], rounds: int
) -> Timings:
    timings = Timings({t.label: [] for t in targets})
    api_headers = {"Authorization": f"Bearer {KEY}"}
    page_headers = {"Cookie": f"{COOKIE}={cookie}"}
    for index in range(WARMUP + rounds):
        for target in targets:
            headers = page_headers if target.dashboard else api_headers
            started = time.perf_counter()
            async with http.get(root + target.path, headers=headers, allow_redirects=False) as answer:
                body = await answer.read()
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status != 200 or target.expect.encode() not in body:
                raise RuntimeError(f"{target.path} answered {answer.status}: {body[:200]!r}")
            if index >= WARMUP:
                timings.ms[target.label].append(elapsed)
                timings.bytes[target.label] = len(body)
    return timings


async def _page_weight(http: aiohttp.ClientSession, root: str, cookie: str) -> dict[str, int]:
    """Bytes of `/` and of each stylesheet and script it links, as sent (and gzip -6 of each)."""
    async with http.get(f"{root}/", headers={"Cookie": f"{COOKIE}={cookie}"}) as answer:
        html = await answer.read()
    weight = {"html": len(html), "html_gzip": len(gzip.compress(html, 6))}
    for asset in sorted(set(_ASSET.findall(html.decode()))):
        async with http.get(root + asset) as answer:
            answer.raise_for_status()
            content = await answer.read()
        kind = "css" if asset.endswith(".css") else "js" if asset.endswith(".js") else asset
        weight[kind] = weight.get(kind, 0) + len(content)
        weight[f"{kind}_gzip"] = weight.get(f"{kind}_gzip", 0) + len(gzip.compress(content, 6))
    return weight


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


async def run(work: Path, batches: int, rounds: int) -> Section:
    with FakeUpstream() as upstream:
        server = Overnight(
            work, "dashboard", upstream.base_url, 64, env={"OVERNIGHT_API_KEYS": f"{KEY}={PROJECT}"}
        )
        server.config.write_text(server.config.read_text() + PRICES)
        with server:
            async with session() as http:
                api = Api(http, server.base_url)
                started = time.perf_counter()
                showcase, running = await _populate(api, upstream, work, batches)
                populate_s = time.perf_counter() - started
                idle = CpuMeter({"overnight": [server.pid]}, main_thread_of=("overnight",)).start()
                await asyncio.sleep(IDLE_S)
                idle.stop()
                cookie = await _sign_in(http, server.root)
                targets = _targets(showcase, running[-1])
                meter = CpuMeter({"overnight": [server.pid]}, main_thread_of=("overnight",)).start()
                timings = await _measure(http, server.root, cookie, targets, rounds)
                meter.stop()
                weight = await _page_weight(http, server.root, cookie)
    return _section(batches, rounds, targets, timings, weight, populate_s, meter.cores(), idle.cores())


def _section(
    batches: int,
    rounds: int,
    targets: list[Target],
    timings: Timings,
    weight: dict[str, int],
    populate_s: float,
    used: dict[str, float],
    idle: dict[str, float],
) -> Section:
    section = Section(
        "dashboard",
        f"dashboard: {batches:,} batches in one project (the newest {LIST_LIMIT} running), {rounds} "
        "sequential requests each, keys configured, signed in",
    )
    stats: dict[str, dict[str, float]] = {}
    for target in targets:
        values = timings.ms[target.label]
        stats[target.label] = {"median_ms": statistics.median(values), "p95_ms": _p95(values)}
        mine = stats[target.label]
        shown = f"{mine['median_ms']:.1f} / {mine['p95_ms']:.1f} ms"
        section.add(f"{target.label}: median / p95", shown)
        if target.baseline is not None:
            base = stats[target.baseline]
            mine["ratio_median"] = mine["median_ms"] / base["median_ms"]
            mine["ratio_p95"] = mine["p95_ms"] / base["p95_ms"]
            section.add(
                f"  / {target.baseline}: median / p95",
                f"{mine['ratio_median']:.2f} / {mine['ratio_p95']:.2f}",
            )
        mine["bytes"] = timings.bytes[target.label]
    total = weight["html"] + weight.get("css", 0) + weight.get("js", 0)
    zipped = weight["html_gzip"] + weight.get("css_gzip", 0) + weight.get("js_gzip", 0)
    section.add(
        f"page weight of / ({LIST_LIMIT} rows): HTML + CSS + JS",
        f"{weight['html']:,} + {weight.get('css', 0):,} + {weight.get('js', 0):,} = {total:,} B",
    )
    section.add("  the same gzipped (-6; Overnight itself sends them uncompressed)", f"{zipped:,} B")
    listing = next(t for t in targets if t.path == "/ui/fragments/batches")
    section.add("what / fetches every 2 s (its fragment)", f"{timings.bytes[listing.label]:,} B")
    refused = ", ".join(f"{share:.0%} with {status}" for status, share in REFUSED.items())
    section.notes.append(
        f"store filled in {populate_s:.1f} s: one {SHOWCASE_LINES:,}-line batch run to completion (each line "
        f"answered after {SHOWCASE_DELAY_MS} ms, refused: {refused}), then {batches - 1:,} 3-line batches "
        "created through the API while the fake upstream hangs"
    )
    section.notes.append(
        "latency is the bench client's: request sent -> whole body read, over one keep-alive connection "
        "(the same client cost is in the baseline)"
    )
    section.notes.append(f"cores used while measuring: {cores(used)}")
    section.notes.append(
        f"cores used in {IDLE_S:g} s without any request, before measuring (the engine's upkeep of the "
        f"{batches - 1:,} running batches; it weighs on the pages and the baseline alike): {cores(idle)}"
    )
    section.data = {
        "batches": batches,
        "rounds": rounds,
        "list_limit": LIST_LIMIT,
        "targets": stats,
        "page_weight": weight | {"total": total, "total_gzip": zipped},
        "populate_s": populate_s,
        "cores": used,
        "cores_idle": idle,
    }
    return section
