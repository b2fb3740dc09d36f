"""Lines the upstream refuses for good, and a healthy batch behind them on the same backend.

Batch A holds 5 lines the fake upstream always refuses (a JSON 500, a plain-text 500, or a 400);
batch B, 10 healthy lines, is created right after it. Measured: when each batch ends, and whether
A's error file carries the upstream's own answer. Before the fix of issue 8, A sat `in_progress`
and B waited behind it (the circuit breaker probed A's lines for ever); `--only stall` on an older
checkout shows it, each variant cut off after CAP_S.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from .client import TERMINAL, Api, session
from .procs import FakeUpstream, Overnight
from .report import Section

CAP_S = 90.0
VARIANTS: dict[str, dict[str, Any]] = {
    "json 500": {"status": 500},
    "plain-text 500": {"status": 500, "text_body": "Internal Server Error"},
    "400": {"status": 400},
}


def _write(path: Path, prefix: str, count: int, fake: dict[str, Any] | None) -> Path:
    with path.open("w") as out:
        for i in range(count):
            body: dict[str, Any] = {
                "model": "fake-chat",
                "messages": [{"role": "user", "content": f"{prefix}{i}"}],
            }
            if fake is not None:
                body["fake"] = fake
            line = {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            out.write(json.dumps(line) + "\n")
    return path


async def _until_ended(api: Api, batch_id: str, started: float) -> tuple[dict[str, Any], float | None]:
    while True:
        batch = await api.retrieve(batch_id)
        if batch["status"] in TERMINAL:
            return batch, time.monotonic() - started
        if time.monotonic() - started > CAP_S:
            return batch, None
        await asyncio.sleep(0.05)


async def _variant(work: Path, name: str, fake: dict[str, Any], upstream: str) -> dict[str, Any]:
    key = name.replace(" ", "-")
    server = Overnight(work, f"stall-{key}", upstream, 16).start()
    try:
        async with session() as http:
            api = Api(http, server.base_url)
            bad = await api.upload(_write(work / f"stall-{key}-a.jsonl", "bad", 5, fake))
            good = await api.upload(_write(work / f"stall-{key}-b.jsonl", "good", 10, None))
            started = time.monotonic()
            first = await api.create(bad["id"])
            second = await api.create(good["id"])
            (a, a_s), (b, b_s) = await asyncio.gather(
                _until_ended(api, first["id"], started), _until_ended(api, second["id"], started)
            )
            carried = None
            if a["status"] == "completed" and a.get("error_file_id"):
                lines = (await api.content(a["error_file_id"])).decode().splitlines()
                carried = all(json.loads(line)["response"]["status_code"] == fake["status"] for line in lines)
            return {"a": a, "a_s": a_s, "b": b, "b_s": b_s, "upstream_answer_in_error_file": carried}
    finally:
        server.stop()


def _when(seconds: float | None, batch: dict[str, Any]) -> str:
    counts = batch["request_counts"]
    done = f"{counts['completed']}+{counts['failed']}/{counts['total']}"
    if seconds is None:
        return f"still {batch['status']} after {CAP_S:.0f} s ({done})"
    return f"{batch['status']} in {seconds:.1f} s ({done})"


async def run(work: Path) -> Section:
    section = Section("stall", "Lines the upstream always refuses, and a healthy batch behind them")
    with FakeUpstream() as upstream:
        for name, fake in VARIANTS.items():
            found = await _variant(work, name, fake, upstream.base_url)
            section.data[name] = found
            section.add(f"{name}: batch A (5 refused lines)", _when(found["a_s"], found["a"]))
            section.add(
                f"{name}: batch B (10 healthy lines, created after A)",
                _when(found["b_s"], found["b"]),
                "completes, not held up by A",
                passed=found["b_s"] is not None and found["b"]["status"] == "completed",
            )
            section.add(
                f"{name}: A's error file has the upstream's answer",
                str(found["upstream_answer_in_error_file"]),
                "True",
                passed=found["upstream_answer_in_error_file"] is True,
            )
    section.notes.append(
        "shipped settings: max_attempts 5, retry_base_delay_s 0.5, circuit breaker after 5 failures"
    )
    return section
