"""`overnight submit` against the real `overnight serve` (a subprocess) and the fake upstream: a job split
under a lowered limit, retries, permanent failures, invalid input, and a client killed midway."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from openai import OpenAI

from support.server import FakeUpstreamProcess, OvernightServer
from support.submit import (
    EXIT_ALL_SUCCEEDED,
    EXIT_INVALID_INPUT,
    EXIT_SOME_FAILED,
    assert_one_result_per_line,
    chat,
    client_env,
    embedding,
    overnight_command,
    read_jsonl,
    read_state,
    run_overnight,
    state_path,
    wait_for_state,
    write_lines,
)


def _batches_of(client: OpenAI, job_id: str) -> list[Any]:
    return [
        batch
        for batch in client.batches.list(limit=100)
        if (batch.metadata or {}).get("overnight_job") == job_id
    ]


def _submit(
    server: OvernightServer, source: Path, output: Path, *flags: str
) -> subprocess.CompletedProcess[str]:
    return run_overnight(
        "submit", source, "-o", output, "--base-url", server.base_url, "--poll-interval", "0.1", *flags,
        cwd=output.parent,
    )  # fmt: skip


def test_a_job_of_120000_lines_in_parts_under_a_lowered_limit(
    server: OvernightServer, upstream: FakeUpstreamProcess, client: OpenAI, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    flaky = {i: f"flaky-{run}-{i}" for i in range(7, 120_000, 9_973)}  # fail on all 3 server tries, then work
    lines = [
        chat(f"line-{i}", fake={"fail_times": 3, "key": flaky[i]}) if i in flaky else chat(f"line-{i}")
        for i in range(120_000)
    ]
    source = write_lines(tmp_path / "eval.jsonl", lines)
    output = tmp_path / "results.jsonl"

    result = _submit(server, source, output, "--max-lines", "20000")

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr[-3000:]
    results = assert_one_result_per_line(output, [line["custom_id"] for line in lines])
    assert all(line["response"]["status_code"] == 200 for line in results)
    assert not output.with_name("results.errors.jsonl").exists()
    state = read_state(output)
    assert state is not None
    assert state["finished"]
    first_round = [part for part in state["parts"] if part["round"] == 0]
    assert [part["lines"] for part in first_round] == [20_000] * 6
    retried = [part for part in state["parts"] if part["round"] == 1]
    assert sum(part["lines"] for part in retried) == len(flaky)
    batches = _batches_of(client, state["job_id"])
    assert sorted(batch.id for batch in batches) == sorted(part["batch_id"] for part in state["parts"])
    assert all(batch.request_counts.total <= 20_000 for batch in batches)
    by_key = upstream.stats()["by_key"]
    assert all(by_key[key] == 4 for key in flaky.values())  # 3 tries in round 0, 1 in the retry
    assert state["summary"]["succeeded"] == 120_000
    assert state["summary"]["input_tokens"] > 0
    assert not output.with_name("results.jsonl.overnight").exists()  # the work folder is cleaned up
    assert "120,000: 120,000 succeeded, 0 failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_permanent_failures_are_not_retried(
    server: OvernightServer, upstream: FakeUpstreamProcess, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    lines = []
    for i in range(200):
        if i % 40 == 3:
            lines.append(chat(f"c{i}", fake={"status": 400, "key": f"bad-{run}-{i}"}))
        elif i % 40 == 5:
            lines.append(chat(f"c{i}", fake={"status": 500, "key": f"down-{run}-{i}"}))  # fails every time
        else:
            lines.append(chat(f"c{i}"))
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"

    result = _submit(server, source, output, "--max-lines", "50", "--retries", "2")

    assert result.returncode == EXIT_SOME_FAILED, result.stderr[-3000:]
    results = assert_one_result_per_line(output, [line["custom_id"] for line in lines])
    failed = [line for line in results if line["response"]["status_code"] != 200]
    assert read_jsonl(tmp_path / "out.errors.jsonl") == failed
    assert {line["custom_id"] for line in failed} == {f"c{i}" for i in range(200) if i % 40 in (3, 5)}
    by_key = upstream.stats()["by_key"]
    for i in range(3, 200, 40):
        assert by_key[f"bad-{run}-{i}"] == 1  # a 400 is tried once
        assert by_key[f"down-{run}-{i + 2}"] == 3 * 3  # 3 server tries in each of 1 + 2 rounds
    assert "fake_400: 5" in result.stderr


def test_invalid_input_is_refused_with_line_numbers(server: OvernightServer, tmp_path: Path) -> None:
    good = json.dumps(chat("a"))
    no_custom_id = json.dumps({k: v for k, v in chat("x").items() if k != "custom_id"})
    streaming = json.dumps(chat("s", stream=True))
    source = tmp_path / "in.jsonl"
    source.write_text(f"{good}\n\nnot json\n{json.dumps(chat('b'))}\n{no_custom_id}\n{good}\n{streaming}\n")
    output = tmp_path / "out.jsonl"

    result = _submit(server, source, output)

    assert result.returncode == EXIT_INVALID_INPUT
    assert "line 3: invalid_json_line" in result.stderr
    assert "line 5: missing_required_parameter" in result.stderr
    assert "line 6: duplicate_custom_id: The custom_id 'a' is a duplicate of line 1." in result.stderr
    assert "line 7: streaming_unsupported" in result.stderr
    assert "line 4" not in result.stderr
    assert "line 1:" not in result.stderr
    assert "nothing was submitted" in result.stderr
    assert not output.exists()
    assert not state_path(output).exists()
    assert not output.with_name("out.jsonl.overnight").exists()
    assert "Traceback" not in result.stderr


def test_a_client_killed_midway_picks_up_the_same_batches(
    server: OvernightServer, client: OpenAI, tmp_path: Path
) -> None:
    lines = [chat(f"k{i}", fake={"delay_ms": 15}) for i in range(4_000)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    command = overnight_command(
        "submit",
        source,
        "-o",
        output,
        "--base-url",
        server.base_url,
        "--max-lines",
        "500",
        "--poll-interval",
        "0.1",
    )
    first = subprocess.Popen(command, cwd=tmp_path, env=client_env(), stderr=subprocess.DEVNULL)
    try:
        before = wait_for_state(
            output, lambda s: sum(p["batch_id"] is not None for p in s["parts"]) >= 3, first
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not all(part["collected"] for part in before["parts"])
    # The crash window of a create: pretend the state file was written just before the answer came.
    state = read_state(output)
    assert state is not None
    lost = next(part for part in state["parts"] if part["batch_id"] is not None and not part["collected"])
    lost_batch, lost["batch_id"], lost["create_sent"] = lost["batch_id"], None, True
    state_path(output).write_text(json.dumps(state))

    result = run_overnight(*command[3:], cwd=tmp_path)

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr[-3000:]
    assert f"resuming job {state['job_id']}" in result.stderr
    assert_one_result_per_line(output, [line["custom_id"] for line in lines])
    after = read_state(output)
    assert after is not None
    submitted_before = {p["name"]: p["batch_id"] for p in before["parts"] if p["batch_id"] is not None}
    assert {name: after_part["batch_id"] for name, after_part in ((p["name"], p) for p in after["parts"])
            if name in submitted_before} == submitted_before  # fmt: skip
    assert after["parts"][[p["name"] for p in after["parts"]].index(lost["name"])]["batch_id"] == lost_batch
    batches = _batches_of(client, state["job_id"])
    assert len(batches) == len(after["parts"]) == 8  # one batch per part: none made twice


def test_a_finished_job_run_again_submits_nothing(
    server: OvernightServer, client: OpenAI, tmp_path: Path
) -> None:
    lines = [chat(f"f{i}") for i in range(30)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    assert _submit(server, source, output).returncode == EXIT_ALL_SUCCEEDED
    state = read_state(output)
    assert state is not None

    again = _submit(server, source, output)

    assert again.returncode == EXIT_ALL_SUCCEEDED, again.stderr
    assert "finished in" in again.stderr
    assert len(_batches_of(client, state["job_id"])) == 1
    assert_one_result_per_line(output, [line["custom_id"] for line in lines])


def test_stream_against_overnight_writes_results_while_batches_run(
    server: OvernightServer, tmp_path: Path
) -> None:
    lines = [chat(f"s{i}", fake={"delay_ms": 10}) for i in range(1_200)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    command = overnight_command(
        "submit", source, "-o", output, "--base-url", server.base_url, "--max-lines", "400", "--stream",
        "--poll-interval", "0.1",
    )  # fmt: skip
    process = subprocess.Popen(  # unbuffered: communicate() below reads the pipe's file descriptor itself
        command, cwd=tmp_path, env=client_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    running = read_state(output)
    rest, stderr = process.communicate(timeout=120)

    assert process.returncode == EXIT_ALL_SUCCEEDED, stderr.decode()[-3000:]
    assert running is not None
    assert not all(part["collected"] for part in running["parts"])  # the first result came before the end
    assert (
        b"the server has partial results" in stderr
    )  # Overnight's partial results (docs/partial-results.md)
    streamed = [first["custom_id"]] + [json.loads(line)["custom_id"] for line in rest.splitlines()]
    assert sorted(streamed) == sorted(line["custom_id"] for line in lines)  # as they arrived, each once
    assert_one_result_per_line(output, [line["custom_id"] for line in lines])


def test_a_large_input_never_sits_in_memory(server: OvernightServer, tmp_path: Path) -> None:
    text = "word " * 6_000  # 30 KB a line, 150 MB in all
    lines = [embedding(f"big-{i}", model="text-embedding-3-small", input=f"{text}{i}") for i in range(5_000)]
    source = write_lines(tmp_path / "big.jsonl", lines)
    output = tmp_path / "out.jsonl"
    command = overnight_command(
        "submit",
        source,
        "-o",
        output,
        "--base-url",
        server.base_url,
        "--max-bytes",
        "40MB",
        "--poll-interval",
        "0.2",
    )
    measure = (
        "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
    )

    result = subprocess.run(
        [sys.executable, "-c", measure, *command], cwd=tmp_path, env=client_env(), capture_output=True,
        text=True, timeout=240, check=False,
    )  # fmt: skip

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr[-3000:]
    peak_mib = int(result.stdout.split()[-1]) / 1024
    assert source.stat().st_size > 140 * 1024 * 1024
    assert peak_mib < 130, f"the client peaked at {peak_mib:.0f} MiB"
    state = read_state(output)
    assert state is not None
    assert len(state["parts"]) == 4
    assert all(part["bytes"] <= 40 * 1024 * 1024 for part in state["parts"])
    assert_one_result_per_line(output, [line["custom_id"] for line in lines])


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _three_collected_and_the_last_submitted(state: dict[str, Any]) -> bool:
    parts = state["parts"]
    return sum(p["collected"] for p in parts) == 3 and all(p["batch_id"] is not None for p in parts)


def test_ctrl_c_midway_keeps_every_result_and_the_same_command_finishes(
    server: OvernightServer, upstream: FakeUpstreamProcess, client: OpenAI, tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C) while the last part's batch is held on the upstream: the parts collected so far
    stay collected, and the same command run again picks up the same batches and runs no line twice."""
    run = uuid.uuid4().hex[:8]
    held = {198, 199}  # two lines of the last part wait on the upstream until released
    lines = [
        chat(f"i{i}", fake={"key": f"int-{run}-{i}", **({"hold": True} if i in held else {})})
        for i in range(200)
    ]
    source = write_lines(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"
    command = overnight_command(
        "submit", source, "-o", output, "--base-url", server.base_url, "--max-lines", "50",
        "--poll-interval", "0.1",
    )  # fmt: skip
    first = subprocess.Popen(  # SIGINT as a terminal's Ctrl-C sends it: a shell's `&` may ignore it
        command, cwd=tmp_path, env=client_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        try:
            before = wait_for_state(output, _three_collected_and_the_last_submitted, first)
        finally:
            first.send_signal(signal.SIGINT)
            _, stderr = first.communicate(timeout=60)
    finally:
        upstream.control(release=-1)

    assert first.returncode == 130, stderr.decode()[-3000:]
    said = stderr.decode()
    assert "interrupted. Every result collected so far is kept" in said
    assert "Traceback" not in said
    interrupted = read_state(output)
    assert interrupted is not None
    assert not interrupted["finished"]
    collected = [part for part in interrupted["parts"] if part["collected"]]
    assert [(part["succeeded"], part["failed"]) for part in collected] == [(50, 0)] * 3
    assert [part["name"] for part in collected] == [p["name"] for p in before["parts"] if p["collected"]]

    result = run_overnight(*command[3:], cwd=tmp_path)

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr[-3000:]
    assert f"resuming job {interrupted['job_id']}: 3 of 4 parts collected" in result.stderr
    assert_one_result_per_line(output, [line["custom_id"] for line in lines])
    after = read_state(output)
    assert after is not None
    assert [p["batch_id"] for p in after["parts"]] == [p["batch_id"] for p in interrupted["parts"]]
    assert len(_batches_of(client, interrupted["job_id"])) == 4  # none made again
    by_key = upstream.stats()["by_key"]
    assert all(by_key[f"int-{run}-{i}"] == 1 for i in range(200) if i not in held)  # none run twice
