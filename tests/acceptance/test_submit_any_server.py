"""`overnight submit` and `overnight batches` against another provider: a double that speaks only the stock
Batch API, with stricter limits and a key (tests/support/stock_batch_api.py). Nothing may depend on
Overnight's extensions; Doubleword's partial results are used only where the server has them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.submit import (
    EXIT_ALL_SUCCEEDED,
    EXIT_SOME_FAILED,
    StockBatchApiProcess,
    assert_one_result_per_line,
    chat,
    client_env,
    embedding,
    overnight_command,
    read_jsonl,
    read_state,
    run_overnight,
    wait_for_state,
    write_lines,
)

KEY = "sk-other-provider"


@pytest.fixture
def provider() -> Iterator[StockBatchApiProcess]:
    double = StockBatchApiProcess("--max-lines", "1000", "--api-key", KEY)
    yield double
    double.stop()


@pytest.fixture
def partial_provider() -> Iterator[StockBatchApiProcess]:
    double = StockBatchApiProcess(
        "--max-lines", "1000", "--partial-results", "--tick-ms", "20", "--lines-per-tick", "50"
    )
    yield double
    double.stop()


@pytest.fixture
def slow_provider() -> Iterator[StockBatchApiProcess]:
    double = StockBatchApiProcess("--partial-results", "--tick-ms", "50", "--lines-per-tick", "20")
    yield double
    double.stop()


def _mixed_lines(count: int) -> list[dict[str, object]]:
    """Chat and embedding lines interleaved, some failing once with a 503."""
    lines: list[dict[str, object]] = []
    for i in range(count):
        flaky: dict[str, Any] = {"double": {"status": 503, "times": 1}} if i % 250 == 11 else {}
        lines.append(embedding(f"e{i}", **flaky) if i % 3 == 0 else chat(f"c{i}", **flaky))
    return lines


def test_a_stock_provider_with_stricter_limits(provider: StockBatchApiProcess, tmp_path: Path) -> None:
    lines = _mixed_lines(3_500)
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    env = {"OPENAI_BASE_URL": provider.base_url, "OPENAI_API_KEY": KEY}  # as the SDK takes them

    result = run_overnight(
        "submit",
        source,
        "-o",
        output,
        "--max-lines",
        "1000",
        "--poll-interval",
        "0.05",
        cwd=tmp_path,
        env=env,
    )

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr[-3000:]
    results = assert_one_result_per_line(output, [str(line["custom_id"]) for line in lines])
    for line, answer in zip(lines, results, strict=True):
        expected = "list" if line["url"] == "/v1/embeddings" else "chat.completion"
        assert answer["response"]["body"]["object"] == expected
    state = read_state(output)
    assert state is not None
    first = [part for part in state["parts"] if part["round"] == 0]
    assert sorted((part["model"], part["lines"]) for part in first) == [
        ("fake-chat", 333),
        ("fake-chat", 1000),
        ("fake-chat", 1000),
        ("fake-embed", 167),
        ("fake-embed", 1000),
    ]
    retried = [part for part in state["parts"] if part["round"] == 1]
    assert sum(part["lines"] for part in retried) == 14  # the 503s, once each
    stats = provider.stats()
    assert stats["batches"] == len(state["parts"])
    assert stats["idempotency_keys"] == 2 * len(state["parts"])  # sent on every upload and create, ignored
    assert "no partial results" not in result.stderr  # nothing asked of a server that has none


def test_parts_too_big_for_the_provider_fail_for_good(provider: StockBatchApiProcess, tmp_path: Path) -> None:
    lines = [chat(f"c{i}") for i in range(1_200)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"

    result = run_overnight(
        "submit", source, "-o", output, "--base-url", provider.base_url, "--api-key", KEY,
        "--poll-interval", "0.05", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == EXIT_SOME_FAILED
    assert "too_many_tasks" in result.stderr
    assert "--max-lines" in result.stderr
    failures = read_jsonl(tmp_path / "out.errors.jsonl")
    assert len(failures) == 1_200
    assert {line["error"]["code"] for line in failures} == {"too_many_tasks"}
    assert provider.stats()["batches"] == 1  # a refused batch is not retried


def test_a_wrong_key_stops_the_job_with_the_servers_answer(
    provider: StockBatchApiProcess, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [chat("c0")])

    result = run_overnight(
        "submit", source, "-o", tmp_path / "out.jsonl", "--base-url", provider.base_url, "--api-key", "wrong",
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == EXIT_SOME_FAILED
    assert "HTTP 401" in result.stderr
    assert "Incorrect API key" in result.stderr
    assert "Traceback" not in result.stderr


def test_stream_writes_results_as_they_arrive_where_the_server_has_partial_results(
    partial_provider: StockBatchApiProcess, tmp_path: Path
) -> None:
    lines = [chat(f"c{i}") for i in range(1_500)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    command = overnight_command(
        "submit", source, "-o", output, "--base-url", partial_provider.base_url, "--api-key", "any",
        "--max-lines", "1000", "--stream", "--poll-interval", "0.05",
    )  # fmt: skip
    process = subprocess.Popen(  # unbuffered: communicate() below reads the pipe's file descriptor itself
        command, cwd=tmp_path, env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())  # a result, while its batch still runs
    running = read_state(output)
    assert running is not None
    assert not any(part["collected"] for part in running["parts"] if part["lines"] == 1000)
    rest, stderr = process.communicate(timeout=120)

    assert process.returncode == EXIT_ALL_SUCCEEDED, stderr.decode()[-3000:]
    streamed = [first] + [json.loads(line) for line in rest.splitlines()]
    assert sorted(line["custom_id"] for line in streamed) == sorted(str(line["custom_id"]) for line in lines)
    assert b"the server has partial results" in stderr
    stats = partial_provider.stats()
    assert stats["incomplete_answers"] > 0
    assert stats["offset_reads"] > 0
    assert_one_result_per_line(output, [str(line["custom_id"]) for line in lines])


def test_stream_falls_back_to_whole_parts_on_a_stock_server(
    provider: StockBatchApiProcess, tmp_path: Path
) -> None:
    lines = [chat(f"c{i}") for i in range(1_500)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"

    result = subprocess.run(
        overnight_command(
            "submit", source, "-o", output, "--base-url", provider.base_url, "--api-key", KEY,
            "--max-lines", "1000", "--stream", "--poll-interval", "0.05",
        ),
        cwd=tmp_path, env=client_env(), capture_output=True, timeout=120, check=False,
    )  # fmt: skip

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr.decode()[-3000:]
    streamed = [json.loads(line)["custom_id"] for line in result.stdout.splitlines()]
    assert sorted(streamed) == sorted(str(line["custom_id"]) for line in lines)  # each once
    assert_one_result_per_line(output, [str(line["custom_id"]) for line in lines])


def test_a_batch_cancelled_midway_is_retried(slow_provider: StockBatchApiProcess, tmp_path: Path) -> None:
    lines = [chat(f"c{i}") for i in range(1_000)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    base = ["--base-url", slow_provider.base_url, "--api-key", "any"]
    command = overnight_command("submit", source, "-o", output, *base, "--poll-interval", "0.05")
    process = subprocess.Popen(command, cwd=tmp_path, env=client_env(), stderr=subprocess.PIPE)
    state = wait_for_state(output, lambda s: s["parts"][0]["batch_id"] is not None, process)

    cancel = run_overnight("batches", "cancel", state["parts"][0]["batch_id"], *base, cwd=tmp_path)
    _, stderr = process.communicate(timeout=120)

    assert cancel.returncode == 0
    assert "cancelling" in cancel.stdout
    assert process.returncode == EXIT_ALL_SUCCEEDED, stderr.decode()[-3000:]
    assert_one_result_per_line(output, [str(line["custom_id"]) for line in lines])
    final = read_state(output)
    assert final is not None
    assert final["parts"][0]["status"] == "cancelled"
    assert sum(part["lines"] for part in final["parts"] if part["round"] == 1) > 0


def test_the_batches_companions(provider: StockBatchApiProcess, tmp_path: Path) -> None:
    lines = [chat(f"c{i}", double={"status": 400}) if i == 3 else chat(f"c{i}") for i in range(10)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    base = ["--base-url", provider.base_url, "--api-key", KEY]
    assert (
        run_overnight(
            "submit", source, "-o", output, *base, "--poll-interval", "0.05", cwd=tmp_path
        ).returncode
        == 1
    )
    state = read_state(output)
    assert state is not None
    batch_id = state["parts"][0]["batch_id"]

    listed = run_overnight("batches", "list", *base, cwd=tmp_path)
    status = run_overnight("batches", "status", batch_id, *base, cwd=tmp_path)
    as_json = run_overnight("batches", "status", batch_id, "--json", *base, cwd=tmp_path)
    saved = run_overnight("batches", "results", batch_id, "-o", tmp_path / "b.jsonl", *base, cwd=tmp_path)
    printed = run_overnight("batches", "results", batch_id, *base, cwd=tmp_path)
    missing = run_overnight("batches", "status", "batch_nope", *base, cwd=tmp_path)

    assert batch_id in listed.stdout
    assert "completed" in listed.stdout
    assert "r0-p0001" in listed.stdout
    assert "9/10 done, 1 failed" in status.stdout
    assert json.loads(as_json.stdout)["id"] == batch_id
    assert saved.returncode == 0
    assert len(read_jsonl(tmp_path / "b.jsonl")) == 9
    assert len(read_jsonl(tmp_path / "b.errors.jsonl")) == 1
    assert sorted(json.loads(line)["custom_id"] for line in printed.stdout.splitlines()) == sorted(
        f"c{i}" for i in range(10)
    )
    assert missing.returncode == 1
    assert "HTTP 404" in missing.stderr
