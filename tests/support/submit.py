"""Helpers for the `overnight submit` tests: the command as a subprocess, input lines, the state file, and
the stock-only Batch API double (tests/support/stock_batch_api.py) as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from support.server import http_json, stop_process

STOCK_API = Path(__file__).with_name("stock_batch_api.py")
SUBMIT_TIMEOUT_S = 240.0
EXIT_ALL_SUCCEEDED, EXIT_SOME_FAILED, EXIT_INVALID_INPUT = 0, 1, 2


def client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without any OVERNIGHT_ or OPENAI_ variable of the machine running the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVERNIGHT_", "OPENAI_"))}
    return {**env, **(extra or {})}


def overnight_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "overnight", *map(str, args)]


def run_overnight(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = SUBMIT_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        overnight_command(*args),
        cwd=cwd,
        env=client_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def chat(custom_id: str, model: str = "fake-chat", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"hi {custom_id}"}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def embedding(custom_id: str, model: str = "fake-embed", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "input": f"text {custom_id}", **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    with path.open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line, separators=(",", ":")) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def state_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.overnight-state.json")


def read_state(output: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path(output).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def wait_for_state(
    output: Path,
    done: Callable[[dict[str, Any]], bool],
    process: subprocess.Popen[bytes],
    timeout: float = 120,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(output)
        if state is not None and done(state):
            return state
        if process.poll() is not None:
            raise AssertionError(
                f"overnight submit exited with {process.returncode} before the state was reached"
            )
        time.sleep(0.02)
    raise TimeoutError(f"the state file of {output} did not get there in {timeout} s")


def assert_one_result_per_line(output: Path, custom_ids: list[str]) -> list[dict[str, Any]]:
    """The results file has exactly one line per input line, in input order."""
    results = read_jsonl(output)
    assert [line["custom_id"] for line in results] == custom_ids
    return results


class StockBatchApiProcess:
    """The stock-only Batch API double as a subprocess."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(STOCK_API), *args], stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the stock Batch API double failed to start: {line!r}")
        self.base_url = line.split(" ", 1)[1]

    def stats(self) -> dict[str, int]:
        result: dict[str, int] = http_json("GET", self.base_url.removesuffix("/v1") + "/_stats")
        return result

    def stop(self) -> None:
        stop_process(self.process)
