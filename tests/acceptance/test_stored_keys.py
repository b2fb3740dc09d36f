"""Keys kept in the store, end to end: `overnight keys create|list|revoke` (the real CLI) and the real
server taking them (the openai SDK); revocation seen at once by two API servers on one PostgreSQL; and a
server that would be open beyond loopback refusing to start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import AuthenticationError

from acceptance.conftest import make_client, write_config
from support.server import (
    STARTUP_TIMEOUT_S,
    FakeUpstreamProcess,
    OvernightServer,
    free_port,
    running,
    stop_process,
    wait_until_healthy,
)

CLI_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Made:
    id: str
    secret: str


def keys_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overnight", "keys", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def create_key(*args: str, env: Mapping[str, str] | None = None) -> Made:
    done = keys_cli("create", *args, env=env)
    assert done.returncode == 0, done.stderr
    first, secret = done.stdout.strip().splitlines()
    assert "only time" in done.stderr
    return Made(first.split()[0], secret)


def test_a_key_made_by_the_cli_works_until_it_is_revoked(
    upstream: FakeUpstreamProcess, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    where = ("--data-dir", str(tmp_path / "data"), "--config", str(config))
    member = create_key("--project", "alpha", "--name", "ci runner", *where)
    admin = create_key("--project", "ops", "--admin", *where)
    assert member.secret.startswith("sk-ovn-")
    assert member.id.startswith("key_")

    listed = keys_cli("list", *where)
    assert listed.returncode == 0, listed.stderr
    assert member.id in listed.stdout
    assert admin.id in listed.stdout
    assert "ci runner" in listed.stdout
    assert f"sk-ovn-…{member.secret[-4:]}" in listed.stdout
    assert member.secret not in listed.stdout + listed.stderr
    assert admin.secret not in listed.stdout + listed.stderr

    with running(OvernightServer(tmp_path / "data", config)) as server:
        alpha = make_client(server.base_url, member.secret)
        made = alpha.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
        assert alpha.files.retrieve(made.id).id == made.id
        with pytest.raises(AuthenticationError):  # the server is not open: it has stored keys
            make_client(server.base_url, "anything").files.list()

        revoked = keys_cli("revoke", member.id, *where)  # while the server runs
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(AuthenticationError) as refused:
            alpha.files.list()
        assert refused.value.code == "invalid_api_key"
        assert member.secret not in refused.value.message
        assert make_client(server.base_url, admin.secret).files.list() is not None  # others still work

    again = keys_cli("revoke", member.id, *where)
    assert again.returncode == 0
    assert "already revoked" in again.stdout
    unknown = keys_cli("revoke", "key_nosuchkey", *where)
    assert unknown.returncode != 0
    assert "no API key has the id 'key_nosuchkey'" in unknown.stderr
    assert "REVOKED" in (listing := keys_cli("list", *where).stdout)
    assert "Z" in listing.split(member.id)[1]
    assert member.secret.encode() not in (tmp_path / "data" / "overnight.db").read_bytes()


def test_revocation_reaches_every_api_server_at_once(
    upstream: FakeUpstreamProcess, tmp_path: Path, database_url: str
) -> None:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    env = {"OVERNIGHT_DATABASE_URL": database_url}
    made = create_key("--project", "alpha", "--config", str(config), env=env)
    servers = [OvernightServer(tmp_path / f"data-{n}", config, env=env) for n in (1, 2)]
    try:
        for server in servers:
            server.start()
        clients = [make_client(server.base_url, made.secret) for server in servers]
        for client in clients:
            assert client.batches.list().data == []
        revoked = keys_cli("revoke", made.id, "--config", str(config), env=env)
        assert revoked.returncode == 0, revoked.stderr
        for client in clients:  # the very next request, on each server
            with pytest.raises(AuthenticationError) as refused:
                client.batches.list()
            assert refused.value.status_code == 401
    finally:
        for server in servers:
            server.stop()


# -- binding -------------------------------------------------------------------------------------


def serve_on_all_addresses(
    data_dir: Path, config: Path, env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`overnight serve --host 0.0.0.0`, its output in a log file beside the data folder."""
    port = free_port()
    command = [sys.executable, "-m", "overnight", "serve", "--host", "0.0.0.0", "--port", str(port)]
    command += ["--data-dir", str(data_dir), "--config", str(config)]
    log = data_dir.with_name("serve.log")
    with log.open("wb") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    return process, port, log


def test_an_open_server_beyond_loopback_refuses_to_start(
    upstream: FakeUpstreamProcess, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    process, _, log = serve_on_all_addresses(tmp_path / "data", config, {})
    try:
        process.wait(timeout=STARTUP_TIMEOUT_S)
    finally:
        stop_process(process)
    assert process.returncode != 0
    output = log.read_text()
    refusal = [line for line in output.splitlines() if line.startswith("overnight: error:")]
    assert len(refusal) == 1, output
    assert "refusing to serve on 0.0.0.0 with no API keys" in refusal[0]
    assert "allow_unauthenticated = true" in refusal[0]


@pytest.mark.parametrize("why", ["allow_unauthenticated", "stored_key"])
def test_a_server_beyond_loopback_starts_when_told_or_keyed(
    upstream: FakeUpstreamProcess, tmp_path: Path, why: str
) -> None:
    config = write_config(tmp_path / "overnight.toml", upstream.base_url)
    env = {"OVERNIGHT_ALLOW_UNAUTHENTICATED": "true"} if why == "allow_unauthenticated" else {}
    if why == "stored_key":
        create_key("--project", "alpha", "--data-dir", str(tmp_path / "data"), "--config", str(config))
    process, port, _ = serve_on_all_addresses(tmp_path / "data", config, env)
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/health", process)
    finally:
        stop_process(process)
