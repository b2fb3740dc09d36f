"""Real client libraries from PyPI pointed at one Overnight base URL, as their users write them:
autobatcher (default mode: background responses; batch mode: the Batch API), batchling (plain synchronous
calls to a host it does not know), batchwizard, langasync, batchata, and Doubleword's `dw` CLI (`dw stream`
reading a batch's results while it runs, `dw batches retry`). They need openai < 3 and batchata Python
3.12, the project's tests the newest SDK, so they live in an environment of their own, `.venv-clients`
(`make .venv-clients/.ready` installs tests/support/client_libraries.txt), run in a subprocess."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from openai import OpenAI

from acceptance.conftest import WAIT_TIMEOUT_S, chat_line, make_client, run_batch, wait_for, write_config
from support import dw_cli
from support.fake_bodies import REPLY
from support.server import FakeUpstreamProcess, OvernightServer

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "tests" / "support" / "client_libraries.py"
CLIENTS_PYTHON = Path(os.environ.get("OVERNIGHT_CLIENTS_PYTHON", ROOT / ".venv-clients" / "bin" / "python"))
HOW = "`make .venv-clients/.ready` installs the client libraries (tests/support/client_libraries.txt)"


def _clients_python() -> Path:
    if not CLIENTS_PYTHON.exists():
        pytest.skip(f"{CLIENTS_PYTHON} is missing: {HOW}")
    return CLIENTS_PYTHON


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}, **extra}


def run_library(
    library: str, server: OvernightServer, cwd: Path, module: str | None = None
) -> dict[str, Any]:
    python = _clients_python()
    if module is not None:
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
        if found.returncode != 0:
            pytest.skip(f"{library} is not installed in {python.parents[1]} (it needs Python 3.12+): {HOW}")
    command = [str(python), str(SCRIPT), library, server.base_url, "test-key", "fake-chat"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=WAIT_TIMEOUT_S, env=_env(), cwd=cwd, check=False
    )
    assert done.returncode == 0, (
        f"{library} failed:\n{done.stderr[-4000:]}\nserver log:\n{server.log()[-3000:]}"
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_autobatcher_default_mode_runs_on_background_responses(
    server: OvernightServer, tmp_path: Path
) -> None:
    result = run_library("autobatcher", server, tmp_path)
    assert result["chat"] == [REPLY] * 3
    assert result["chat_objects"] == ["chat.completion"] * 3
    assert (result["response"], result["response_status"]) == (REPLY, "completed")


def test_autobatcher_batch_mode_runs_one_batch(server: OvernightServer, tmp_path: Path) -> None:
    result = run_library("autobatcher-batch", server, tmp_path)
    assert result["chat"] == [REPLY] * 3
    assert (result["batch_status"], result["batch_total"]) == ("completed", 3)


def test_batchling_sends_plain_calls_to_an_unknown_host(server: OvernightServer, tmp_path: Path) -> None:
    result = run_library("batchling", server, tmp_path)
    assert result["chat"] == [REPLY] * 3
    assert result["chat_objects"] == ["chat.completion"] * 3
    assert result["embedding_length"] > 0


def test_batchwizard_process_submits_watches_and_downloads(server: OvernightServer, tmp_path: Path) -> None:
    result = run_library("batchwizard", server, tmp_path)
    assert result["custom_ids"] == ["q0", "q1", "q2"]
    assert result["chat"] == [REPLY] * 3
    assert result["errors_files"] == 0


def test_langasync_runs_a_langchain_chain_as_a_batch(server: OvernightServer, tmp_path: Path) -> None:
    result = run_library("langasync", server, tmp_path)
    assert result["job"]
    assert result["statuses"] == ["completed"]
    assert result["chat"] == [REPLY] * 3


def test_batchata_runs_its_jobs_as_a_batch(server: OvernightServer, tmp_path: Path) -> None:
    result = run_library("batchata", server, tmp_path, module="batchata")
    assert result["chat"] == [REPLY] * 3
    assert (result["failed"], result["cancelled"]) == (0, 0)


# -- Doubleword's dw CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def early_server(
    upstream: FakeUpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OvernightServer]:
    """A server with `early_result_file_ids = true`: the Batch names its files from its creation, which
    `dw stream` needs to read them while the batch runs (docs/partial-results.md)."""
    root = tmp_path_factory.mktemp("early")
    config = write_config(root / "overnight.toml", upstream.base_url, early_result_file_ids=True)
    server = OvernightServer(root / "data", config)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def released(upstream: FakeUpstreamProcess) -> Iterator[None]:
    yield
    upstream.control(release=-1)


def _dw(tmp_path: Path, server: OvernightServer) -> tuple[Path, dict[str, str]]:
    """A `dw` this machine runs, and the environment whose home points it at `server`."""
    binary = dw_cli.bundled_binary(_clients_python())
    if binary is None:
        pytest.skip(f"dw-cli is not installed in {CLIENTS_PYTHON.parents[1]}: {HOW}")
    try:
        runnable = dw_cli.loadable(binary, tmp_path)
    except dw_cli.NotLoadable as error:
        pytest.skip(f"dw cannot run on this machine: {error}")
    home = dw_cli.write_home(tmp_path / "home", server.base_url.removesuffix("/v1"), "test-key")
    return runnable, _env(HOME=str(home))


def _lines_of(stream: IO[bytes]) -> queue.Queue[bytes]:
    """The stream's lines as they come, read by a thread (b"" at its end)."""
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=read, daemon=True).start()
    return lines


def _stream_input(tmp_path: Path, prefix: str, held: set[int]) -> tuple[Path, list[str]]:
    """10 requests: line 3 is refused (400), the `held` ones wait on the upstream until released; the
    custom ids that succeed."""
    lines = []
    for i in range(10):
        knobs: dict[str, Any] = {"key": f"{prefix}{i}"}
        knobs.update({"status": 400} if i == 3 else {"hold": True} if i in held else {})
        lines.append(chat_line(f"{prefix}{i}", fake=knobs))
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, [line["custom_id"] for i, line in enumerate(lines) if i != 3]


def test_dw_stream_prints_each_line_once_while_the_batch_runs(
    early_server: OvernightServer, upstream: FakeUpstreamProcess, tmp_path: Path, released: None
) -> None:
    dw, env = _dw(tmp_path, early_server)
    source, succeeded = _stream_input(tmp_path, "dws-", held={7, 8, 9})
    errors = tmp_path / "dw-stderr.txt"
    with errors.open("wb") as stderr_file:
        process = subprocess.Popen(
            [dw, "stream", source], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr_file
        )
    try:
        assert process.stdout is not None
        lines = _lines_of(process.stdout)
        early = [lines.get(timeout=WAIT_TIMEOUT_S) for _ in range(6)]  # the 6 that are not held
        client = make_client(early_server.base_url)
        running = client.batches.list(limit=1).data[0]
        assert running.status == "in_progress"  # three lines are still held on the upstream
        upstream.control(release=-1)
        process.wait(timeout=WAIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    rest = []
    while (line := lines.get(timeout=WAIT_TIMEOUT_S)) != b"":
        rest.append(line)
    said = errors.read_text(errors="replace")
    assert process.returncode == 0, said[-3000:]
    assert f"Batch: {running.id}" in said
    streamed = [json.loads(line)["custom_id"] for line in early + rest]
    assert sorted(streamed[:6]) == [f"dws-{i}" for i in (0, 1, 2, 4, 5, 6)]  # while the batch ran
    assert sorted(streamed) == sorted(succeeded)  # each line exactly once
    done = wait_for(client, running.id)
    assert done.status == "completed"
    assert done.output_file_id is not None
    assert b"".join(early + rest) == client.files.content(done.output_file_id).content  # the file's order


def test_dw_stream_without_early_file_ids_prints_each_line_once_at_the_end(
    server: OvernightServer, tmp_path: Path
) -> None:
    """A stock Batch object names its output only once the batch ends: dw reads the file then, and once
    more from X-Last-Line, which gives nothing more (before these headers, every line came twice)."""
    dw, env = _dw(tmp_path, server)
    source, succeeded = _stream_input(tmp_path, "dwe-", held=set())
    done = subprocess.run(
        [dw, "stream", source],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=WAIT_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    streamed = [json.loads(line)["custom_id"] for line in done.stdout.splitlines()]
    assert sorted(streamed) == sorted(succeeded)


def test_dw_batches_retry_makes_a_batch_of_the_failed_lines(
    server: OvernightServer, client: OpenAI, tmp_path: Path
) -> None:
    dw, env = _dw(tmp_path, server)
    flaky = {2, 5}  # refused on all 3 of the server's tries, then answered
    lines = [
        chat_line(
            f"r{i}", fake={"fail_times": 3, "key": f"dw-retry-{tmp_path.name}-{i}"} if i in flaky else {}
        )
        for i in range(8)
    ]
    first = run_batch(client, lines)
    assert first.request_counts is not None
    assert first.request_counts.failed == 2

    done = subprocess.run(
        [dw, "--output", "json", "batches", "retry", first.id],
        cwd=tmp_path, env=env, capture_output=True, timeout=WAIT_TIMEOUT_S, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    answer = json.loads(done.stdout)
    assert answer["metadata"]["retry_of"] == first.id
    retried = wait_for(client, answer["id"])
    assert retried.status == "completed"
    assert retried.request_counts is not None
    assert (retried.request_counts.total, retried.request_counts.completed) == (2, 2)
    assert retried.output_file_id is not None
    got = sorted(
        json.loads(line)["custom_id"]
        for line in client.files.content(retried.output_file_id).text.splitlines()
    )
    assert got == [f"r{i}" for i in sorted(flaky)]
