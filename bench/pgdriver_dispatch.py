"""The two PostgreSQL drivers on the dispatch benchmark: the same 50,000-request batch at an instant
nginx, one `overnight serve` on PostgreSQL + S3, once on asyncpg (what Overnight ships) and once on
psycopg 3 (bench/psycopg_store.py: the same store class and SQL, psycopg's pool), each on a fresh
database, the same SeaweedFS. bench/pgdriver.py measures the store's operations alone."""

from __future__ import annotations

from pathlib import Path

from .nginx import Nginx
from .procs import Overnight
from .report import Section, rate, ratio
from .scaleout import Run, _measure, _seaweed, _stores, _warm_up, database
from .workload import write_chat_file

DRIVERS = (("asyncpg", "overnight"), ("psycopg 3", "bench.psycopg_store"))


class _OnModule(Overnight):
    """`overnight serve` run as `python -m MODULE` (bench.psycopg_store: Overnight on psycopg)."""

    module = "overnight"

    def command(self) -> list[str]:
        command = super().command()
        return [command[0], "-m", self.module, *command[3:]]


async def run(work: Path, requests: int, concurrency: int) -> Section:
    path = work / "pgdriver-dispatch.jsonl"
    write_chat_file(path, requests)
    runs: dict[str, Run] = {}
    try:
        with Nginx() as nginx, _seaweed(work, "pgdriver") as s3:
            await _warm_up(s3)
            assert s3.process is not None
            watch = {"nginx": nginx.pids, "seaweedfs": [s3.process.pid]}
            order = (*DRIVERS, *reversed(DRIVERS))  # ABBA: neither always goes first
            for number, (label, module) in enumerate(order):
                async with database() as db:
                    server = _OnModule(
                        work,
                        f"pgdriver-{number}",
                        nginx.base_url,
                        concurrency,
                        env=_stores(db, s3, prefix=f"pgdriver-{module}"),
                    )
                    server.module = module
                    server.migrate()
                    measured = await _measure(label, server, path, requests, watch, db)
                    if label not in runs or measured.batch.rps > runs[label].batch.rps:
                        runs[label] = measured  # the better of its two runs
    finally:
        path.unlink(missing_ok=True)
    section = Section(
        "pgdriver_dispatch",
        f"9. PostgreSQL drivers on the dispatch benchmark: {requests:,} requests, instant nginx, concurrency "
        f"{concurrency}, one `overnight serve` on PostgreSQL + S3; each driver twice (ABBA), the better kept",
    )
    shipped, other = runs["asyncpg"], runs["psycopg 3"]
    for label, measured in runs.items():
        section.add(f"{label}: end to end", rate(measured.batch.rps))
        dispatch = measured.dispatch_rps()
        section.add(f"{label}: dispatch phase", rate(dispatch) if dispatch else "n/a")
    section.add("psycopg 3 / asyncpg, end to end", ratio(other.batch.rps / shipped.batch.rps))
    a, b = shipped.dispatch_rps(), other.dispatch_rps()
    if a and b:
        section.add("psycopg 3 / asyncpg, dispatch phase", ratio(b / a))
    for label, measured in runs.items():
        check = measured.batch.check
        section.add(
            f"{label}: output lines / missing / duplicate",
            f"{check.lines:,} / {check.missing} / {check.duplicates}",
            "complete",
            check.ok and check.lines == requests,
        )
    return section
