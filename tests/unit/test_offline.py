"""`overnight run`'s runner against a real HTTP upstream on loopback: progress, and its timeout."""

from __future__ import annotations

import io
import json
from pathlib import Path

from overnight.config import Secrets, load_settings
from overnight.offline import EXIT_ALL_SUCCEEDED, EXIT_SOME_FAILED, run_file
from overnight.wiring import build_offline
from support.fake_upstream import FakeUpstream


def write_input(path: Path, count: int, **fake: object) -> Path:
    with path.open("w") as out:
        for i in range(count):
            body: dict[str, object] = {
                "model": "fake-chat",
                "messages": [{"role": "user", "content": f"q{i}"}],
            }
            if fake:
                body["fake"] = fake
            out.write(
                json.dumps(
                    {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
            )
            out.write("\n")
    return path


async def run(tmp_path: Path, base_url: str, source: Path, timeout_s: float) -> tuple[int, str]:
    settings = load_settings(
        {"upstream": base_url, "config": None},
        {
            "OVERNIGHT_LOCAL_MODELS": "false",
            "OVERNIGHT_RETRY_BASE_DELAY_S": "0.01",
            "OVERNIGHT_MAX_ATTEMPTS": "2",
            "OVERNIGHT_UPSTREAM_MAX_CONCURRENCY": "1",  # 40 lines x 20 ms: progress lines are due
        },
    )
    offline = build_offline(settings, Secrets())
    await offline.router.start()
    stream = io.StringIO()
    try:
        code = await run_file(
            offline,
            source,
            tmp_path / "out.jsonl",
            tmp_path / "out.errors.jsonl",
            timeout_s=timeout_s,
            progress_every_s=0.05,
            stream=stream,
        )
    finally:
        await offline.router.close()
    return code, stream.getvalue()


async def test_progress_is_written_while_it_runs(tmp_path: Path) -> None:
    async with FakeUpstream(latency_s=0.02) as fake:
        code, said = await run(tmp_path, fake.base_url, write_input(tmp_path / "in.jsonl", 40), 60)
    assert code == EXIT_ALL_SUCCEEDED
    progress = [line for line in said.splitlines() if line.startswith("overnight run: ")]
    assert progress
    assert "/40 done" in progress[-1]
    assert said.splitlines()[-1] == "40 succeeded, 0 failed"


async def test_lines_unfinished_at_the_timeout_go_to_the_errors_file(tmp_path: Path) -> None:
    async with FakeUpstream() as fake:
        source = write_input(tmp_path / "in.jsonl", 6, hang=True)
        code, said = await run(tmp_path, fake.base_url, source, 0.5)
    assert code == EXIT_SOME_FAILED
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in errors) == [f"c{i}" for i in range(6)]
    assert all(line["error"]["code"] == "batch_expired" for line in errors)
    assert "6 unfinished line(s)" in said
