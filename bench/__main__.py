"""`python -m bench` (`make bench`): run the scenarios, print a table, optionally write JSON."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import (
    cluster_crash,
    crash,
    dashboard,
    dispatch,
    embeddings,
    ingest,
    latency,
    load,
    pgdriver_dispatch,
    prefix,
    scaleout,
    shared,
    soak,
    stall,
    sync,
    webhooks,
    workers,
)
from .procs import machine
from .report import Section, render

SCENARIOS = (
    "dispatch",
    "latency",
    "ingest",
    "crash",
    "embeddings",
    "stall",
    "scaleout",
    "workers",
    "cluster_crash",
    "pgdriver_dispatch",
    "webhooks",
    "dashboard",
    "sync",
    "shared",
    "load",
    "prefix",
)
EXTRA_SCENARIOS = ("soak",)  # run only when named with --only (make soak)
MB = 1_000_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="requests per batch for dispatch, latency, crash, scaleout, cluster_crash, load; "
        "per worker: workers",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the harness")
    parser.add_argument("--seed", type=int, default=20261126, help="random kill moments of the soak scenario")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="dispatch, crash, scaleout and cluster_crash concurrency (64)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs, data)")
    parser.add_argument(
        "--py-spy", dest="py_spy", type=Path, help="profile the server during the dispatch batch (speedscope)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    return parser


def _plan(args: argparse.Namespace, work: Path) -> dict[str, Callable[[], Awaitable[Section]]]:
    quick = args.quick
    ingest_sizes = [(2 * MB, 1_000), (20 * MB, 5_000)] if quick else [(2 * MB, 1_000), (200 * MB, 50_000)]
    dispatch_n = args.requests or (2_000 if quick else 50_000)
    latency_n = args.requests or (2_000 if quick else 20_000)
    crash_n = args.requests or (4_000 if quick else 20_000)
    scaleout_n = args.requests or (2_000 if quick else 50_000)
    embeddings_n = 500 if quick else 5_000
    workers_n = args.requests or (2_000 if quick else 20_000)  # per worker: N workers get N times as many
    c = args.concurrency
    return {
        "dispatch": lambda: dispatch.run(work, dispatch_n, c, args.py_spy),
        "latency": lambda: latency.run(work, latency_n, 128, 50.0),
        "ingest": lambda: ingest.run(work, ingest_sizes),
        "crash": lambda: crash.run(work, crash_n, c, 20.0),
        "embeddings": lambda: embeddings.run(work, embeddings_n),
        "stall": lambda: stall.run(work),
        "scaleout": lambda: scaleout.run(work, scaleout_n, c),
        "workers": lambda: workers.run(work, workers_n, 50.0),
        "cluster_crash": lambda: cluster_crash.run(work, crash_n, c, 20.0),
        "pgdriver_dispatch": lambda: pgdriver_dispatch.run(work, scaleout_n, c),
        "webhooks": lambda: webhooks.run(work, 200 if quick else 2_000),
        "dashboard": lambda: dashboard.run(work, 200 if quick else 2_000, 50 if quick else 200),
        "sync": lambda: sync.run(work, 100 if quick else 400, 800 if quick else 4_000),
        "shared": lambda: shared.run(work, 4.0 if quick else 30.0),
        "load": lambda: load.run(work, args.requests or (2_000 if quick else 50_000)),
        "prefix": lambda: prefix.run(work, quick),
        "soak": lambda: soak.run(work, 1_000 if quick else 15_000, 3 if quick else 10, args.seed),
    }


def _header(info: dict[str, Any], args: argparse.Namespace) -> list[str]:
    return [
        f"Overnight bench{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"machine: {info['cpus_usable']} usable CPUs of {info['cpus']} ({info['cpu_model']}), "
        f"cgroup cpu.max {info['cgroup_cpu_max']}, load {info['loadavg_at_start']}, Python {info['python']}",
        f"overnight at commit {info['commit']}"
        + (" + uncommitted changes in src/" if info["src_modified"] else ""),
        "the upstream, the Overnight server and the bench client all share these CPUs: the ratios compare "
        "runs made in this same process minutes apart; 'cores' notes say who used how much CPU "
        "('other processes': the rest of the machine, e.g. other users' work)",
    ]


async def _main(args: argparse.Namespace, work: Path) -> int:
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS) - set(EXTRA_SCENARIOS))
    if unknown:
        print(f"bench: unknown scenario(s) {unknown}; choose from {SCENARIOS}", file=sys.stderr)
        return 2
    info = machine()
    plan = _plan(args, work)
    sections: list[Section] = []
    failed = False
    for name in chosen:
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            section = await plan[name]()
        except Exception as exc:
            failed = True
            traceback.print_exc()
            section = Section(name, f"{name}: FAILED to run")
            section.notes.append(f"{type(exc).__name__}: {exc}")
            section.data = {"error": f"{type(exc).__name__}: {exc}"}
        section.data["scenario_wall_s"] = round(time.perf_counter() - started, 1)
        sections.append(section)
    print(render(_header(info, args), sections))
    if args.json is not None:
        report = {
            "machine": info,
            "quick": args.quick,
            "sections": {
                s.key: {"title": s.title, "rows": [vars(r) for r in s.rows], **s.data} for s in sections
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    unmet = any(row.verdict == "FAIL" for s in sections for row in s.rows)
    return 1 if failed or (args.strict and unmet) else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds the scenarios, so the processes they started are stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    import uvloop

    folder = tempfile.mkdtemp(prefix="overnight-bench-")
    try:
        code: int = uvloop.run(_main(args, Path(folder)))
    except KeyboardInterrupt:
        print("bench: interrupted; the processes it started are stopped", file=sys.stderr)
        code = 130
    finally:
        if args.keep:
            print(f"bench: work folder kept at {folder}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
