"""`overnight run` (offline, no server) and `overnight serve`'s handling of bad settings, as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from acceptance.conftest import chat_line, jsonl
from support.server import FakeUpstreamProcess, free_port

RUN_TIMEOUT_S = 120.0
EXIT_ALL_SUCCEEDED, EXIT_SOME_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def overnight(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OVERNIGHT_")}
    return subprocess.run(
        [sys.executable, "-m", "overnight", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_input(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(jsonl(lines))
    return path


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert "Traceback" not in result.stderr
    messages = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(messages) == 1, result.stderr
    assert messages[0].startswith("overnight: error: ")
    for fragment in fragments:
        assert fragment in messages[0]


def test_all_lines_succeed(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    names = [f"ok-{i}" for i in range(20)]
    source = write_input(tmp_path / "in.jsonl", [chat_line(name) for name in names])
    output = tmp_path / "out.jsonl"

    result = overnight("run", source, "-o", output, "--upstream", upstream.base_url, cwd=tmp_path)

    assert result.returncode == EXIT_ALL_SUCCEEDED, result.stderr
    lines = read_jsonl(output)
    assert sorted(line["custom_id"] for line in lines) == sorted(names)
    for line in lines:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
    errors = tmp_path / "out.errors.jsonl"  # the default: beside the output
    assert not errors.exists() or not read_jsonl(errors)
    assert "Traceback" not in result.stderr


def test_failed_lines_go_to_the_errors_file(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    lines = [
        chat_line("ok-1"),
        chat_line("bad-400", fake={"status": 400}),
        chat_line("ok-2"),
        chat_line("bad-404", fake={"status": 404}),
    ]
    source = write_input(tmp_path / "in.jsonl", lines)
    output = tmp_path / "results" / "out.jsonl"
    output.parent.mkdir()

    result = overnight("run", source, "-o", output, "--upstream", upstream.base_url, cwd=tmp_path)

    assert result.returncode == EXIT_SOME_FAILED, result.stderr
    assert sorted(line["custom_id"] for line in read_jsonl(output)) == ["ok-1", "ok-2"]
    errors = {line["custom_id"]: line for line in read_jsonl(output.with_name("out.errors.jsonl"))}
    assert sorted(errors) == ["bad-400", "bad-404"]
    assert errors["bad-400"]["response"]["status_code"] == 400
    assert errors["bad-404"]["response"]["status_code"] == 404
    assert all(line["error"] is None for line in errors.values())
    assert "2 succeeded, 2 failed" in result.stderr


def test_explicit_errors_path(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [chat_line("ok"), chat_line("bad", fake={"status": 422})])
    output, errors = tmp_path / "out.jsonl", tmp_path / "failures.jsonl"

    result = overnight(
        "run", source, "-o", output, "--errors", errors, "--upstream", upstream.base_url, cwd=tmp_path
    )

    assert result.returncode == EXIT_SOME_FAILED, result.stderr
    assert [line["custom_id"] for line in read_jsonl(errors)] == ["bad"]
    assert [line["custom_id"] for line in read_jsonl(output)] == ["ok"]
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_invalid_input_is_reported_by_line(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    key = f"cli-invalid-{uuid.uuid4().hex}"
    good = json.dumps(chat_line("fine", fake={"key": key}))
    no_custom_id = json.dumps({key: value for key, value in chat_line("x").items() if key != "custom_id"})
    source.write_text(f"{good}\nthis is not json\n{no_custom_id}\n")
    output = tmp_path / "out.jsonl"

    result = overnight("run", source, "-o", output, "--upstream", upstream.base_url, cwd=tmp_path)

    assert result.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in result.stderr
    assert "line 2" in result.stderr
    assert "line 3" in result.stderr
    assert "line 1" not in result.stderr
    assert not output.exists()  # nothing ran
    assert key not in upstream.stats()["by_key"]


def test_missing_input_file(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    result = overnight(
        "run",
        tmp_path / "absent.jsonl",
        "-o",
        tmp_path / "out.jsonl",
        "--upstream",
        upstream.base_url,
        cwd=tmp_path,
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert_one_clear_error(result, "absent.jsonl", "does not exist")


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ("max_attempts = 0\n", ("'max_attempts'", "positive")),
        ("no_such_setting = 1\n", ("'no_such_setting'", "unknown setting")),
        ("this is not toml\n", ("'config'", "not valid TOML")),
    ],
)
def test_bad_config_for_run(
    upstream: FakeUpstreamProcess, tmp_path: Path, config: str, fragments: tuple[str, ...]
) -> None:
    source = write_input(tmp_path / "in.jsonl", [chat_line("ok")])
    bad = tmp_path / "bad.toml"
    bad.write_text(config)
    output = tmp_path / "out.jsonl"

    result = overnight(
        "run", source, "-o", output, "--config", bad, "--upstream", upstream.base_url, cwd=tmp_path
    )

    assert result.returncode == EXIT_BAD_INPUT
    assert_one_clear_error(result, *fragments)
    assert not output.exists()


def test_missing_config_file_for_run(tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [chat_line("ok")])
    result = overnight(
        "run", source, "-o", tmp_path / "out.jsonl", "--config", tmp_path / "nope.toml", cwd=tmp_path
    )
    assert result.returncode == EXIT_BAD_INPUT
    assert_one_clear_error(result, "'config'", "nope.toml", "does not exist")


@pytest.mark.parametrize(
    ("config", "fragments"),
    [
        ('port = "http"\n', ("'port'",)),
        ('log_level = "loud"\n', ("'log_level'",)),
        ('completion_windows = ["soon"]\n', ("'completion_windows'", "'soon'")),
        (
            '[[backends]]\nname = "a"\nbase_url = "ftp://models.example"\n',
            ("'backends[0].base_url'", "http(s) URL"),
        ),
        (
            '[[backends]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'
            'api_key_env = "OVERNIGHT_TEST_SURELY_UNSET_KEY"\n',
            ("'backends[0].api_key_env'", "OVERNIGHT_TEST_SURELY_UNSET_KEY"),
        ),
        ('database_url = "mysql://root:hunter2@db/x"\n', ("'database_url'", "postgresql://")),
        ('blob_url = "https://bucket.example/x"\n', ("'blob_url'", "s3://bucket")),
        (  # a server that answers, and refuses: a wrong database name is a setting, not an outage
            'database_url = "postgresql://postgres@127.0.0.1:5432/overnight_surely_absent_db"\n',
            ("'database_url'", "overnight_surely_absent_db"),
        ),
    ],
)
def test_serve_refuses_a_bad_config(tmp_path: Path, config: str, fragments: tuple[str, ...]) -> None:
    bad = tmp_path / "bad.toml"
    # a free port of its own, in case the bad setting were accepted and the server started
    port = "" if config.startswith("port =") else f"port = {free_port()}\n"
    bad.write_text(port + config)
    result = overnight("serve", "--config", bad, "--data-dir", tmp_path / "data", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_clear_error(result, *fragments)
    assert "hunter2" not in result.stderr  # a password in a URL is never shown


def test_serve_on_a_port_in_use_says_so_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        result = overnight("serve", "--port", str(port), "--data-dir", data, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clear_error(result, "'port'", f"127.0.0.1:{port}")
    assert not data.exists()


def test_run_ends_at_its_timeout_when_the_upstream_is_unreachable(tmp_path: Path) -> None:
    names = [f"u-{i}" for i in range(5)]
    source = write_input(tmp_path / "in.jsonl", [chat_line(name) for name in names])
    output = tmp_path / "out.jsonl"
    dead = f"http://127.0.0.1:{free_port()}/v1"

    result = overnight("run", source, "-o", output, "--upstream", dead, "--timeout", "3s", cwd=tmp_path)

    assert result.returncode == EXIT_SOME_FAILED, result.stderr
    assert "Traceback" not in result.stderr
    assert read_jsonl(output) == []
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert sorted(line["custom_id"] for line in errors) == names
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired"
        assert "could not connect" in line["error"]["message"]  # what its last attempt met
    assert "5 unfinished line(s)" in result.stderr
    assert "0 succeeded, 5 failed" in result.stderr


def test_run_rejects_a_bad_timeout(upstream: FakeUpstreamProcess, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [chat_line("x")])
    result = overnight(
        "run",
        source,
        "-o",
        tmp_path / "o.jsonl",
        "--upstream",
        upstream.base_url,
        "--timeout",
        "soon",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert_one_clear_error(result, "--timeout", "'soon'")


def test_a_database_from_a_newer_release_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    migrated = overnight("migrate", "--data-dir", data, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema up to date" in migrated.stderr
    with sqlite3.connect(data / "overnight.db") as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
    conn.close()
    result = overnight("serve", "--port", str(free_port()), "--data-dir", data, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_clear_error(result, "[9999]", "newer release")
