"""Real client libraries from PyPI pointed at one Overnight base URL: autobatcher's default mode (background
responses) and batchling (plain synchronous calls to a host it does not know). They need openai < 3 and
the project's tests the newest SDK, so they live in an environment of their own, `.venv-clients`
(`make .venv-clients/.ready` installs tests/support/client_libraries.txt), run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from acceptance.conftest import WAIT_TIMEOUT_S
from support.fake_bodies import REPLY
from support.server import OvernightServer

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "tests" / "support" / "client_libraries.py"
CLIENTS_PYTHON = Path(os.environ.get("OVERNIGHT_CLIENTS_PYTHON", ROOT / ".venv-clients" / "bin" / "python"))


def run_library(library: str, server: OvernightServer) -> dict[str, Any]:
    if not CLIENTS_PYTHON.exists():
        pytest.skip(f"{CLIENTS_PYTHON} is missing: `make .venv-clients/.ready` installs the client libraries")
    command = [str(CLIENTS_PYTHON), str(SCRIPT), library, server.base_url, "test-key", "fake-chat"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=WAIT_TIMEOUT_S, env=env, check=False
    )
    assert done.returncode == 0, (
        f"{library} failed:\n{done.stderr[-4000:]}\nserver log:\n{server.log()[-3000:]}"
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_autobatcher_default_mode_runs_on_background_responses(server: OvernightServer) -> None:
    result = run_library("autobatcher", server)
    assert result["chat"] == [REPLY] * 3
    assert result["chat_objects"] == ["chat.completion"] * 3
    assert (result["response"], result["response_status"]) == (REPLY, "completed")


def test_batchling_sends_plain_calls_to_an_unknown_host(server: OvernightServer) -> None:
    result = run_library("batchling", server)
    assert result["chat"] == [REPLY] * 3
    assert result["chat_objects"] == ["chat.completion"] * 3
    assert result["embedding_length"] > 0
