"""Secrets never leak (issue 13): the whole flow runs with marker secrets, then everything the server wrote
is searched for them, in plain form and in simple encodings (tests/support/leaks.py).

The secrets: the upstream's API key (`api_key_env` on `[[backends]]`; the fake upstream refuses any other
key, and a second backend's wrong key, also a marker, is refused with a 401 whose message shows that key
in full, as a careless server might: Overnight keeps it out of the error file), the S3 credentials
(SeaweedFS started with marker credentials), a `[[webhooks]]` secret (`whsec_`, and the key bytes it
stands for), the config file's API keys (a project's and an admin's), a key made with `overnight keys
create` where that command exists, and on PostgreSQL a password in the database URL.

The flow: upload, a batch whose lines succeed or fail at the upstream (500 after retries, 401), its
webhook delivered (and verified with the secret), the output and error files, synchronous requests, the
dashboard signed in with a key, /metrics, the costs endpoint, error answers, all with debug logging to a
file. Searched: the data folder (every file: SQLite's database, WAL and shm), the log, every HTTP answer
(bodies, and headers but the sign-in's cookie, which hands the browser the key it typed), the webhook
requests, what `overnight keys list` prints, and on the second setup every column of every table in
PostgreSQL and every object in the bucket. Run on SQLite + disk and on PostgreSQL + S3.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from acceptance.conftest import WAIT_TIMEOUT_S, chat_line, jsonl
from support import postgres
from support.leaks import Hit, Markers, Recorder, describe, scan_bucket, scan_folder, scan_postgres
from support.seaweed import SeaweedS3
from support.server import FakeUpstreamProcess, OvernightServer
from support.webhook_receiver import ReceiverThread, WebhookReceiver, wait_until

TAG = secrets.token_hex(6)
UPSTREAM_KEY = f"sk-upstream-MARKER-{TAG}-{secrets.token_hex(10)}"
WRONG_UPSTREAM_KEY = f"sk-wrongupstream-MARKER-{TAG}-{secrets.token_hex(10)}"
WEBHOOK_KEY = f"webhook-key-MARKER-{TAG}".encode().ljust(32, b"x")
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
API_KEY = f"sk-proj-MARKER-{TAG}-{secrets.token_hex(10)}"
ADMIN_KEY = f"sk-admin-MARKER-{TAG}-{secrets.token_hex(10)}"
S3_KEY_ID = f"AKIAMARKER{TAG.upper()}"
S3_SECRET = f"s3-secret-MARKER-{TAG}-{secrets.token_urlsafe(18)}"
DB_PASSWORD = f"pgpass-MARKER-{TAG}-{secrets.token_hex(8)}"
ENV = {
    "OVERNIGHT_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
    "OVERNIGHT_TEST_WRONG_UPSTREAM_KEY": WRONG_UPSTREAM_KEY,
    "OVERNIGHT_TEST_WEBHOOK_SECRET": WEBHOOK_SECRET,
}
_KEY_PRINTED = re.compile(r"sk-[A-Za-z0-9_-]{16,}")


def config_text(receiver_url: str, upstream_url: str) -> str:
    return f"""\
log_level = "debug"
local_models = false
worker_poll_interval_s = 0.1
result_flush_interval_s = 0.02
retry_base_delay_s = 0.01
retry_max_delay_s = 0.05
max_attempts = 3
request_timeout_s = 30
webhook_retry_base_s = 0.2
webhook_timeout_s = 5

[[api_keys]]
key = "{API_KEY}"
project = "alpha"

[[api_keys]]
key = "{ADMIN_KEY}"
project = "ops"
admin = true

[[backends]]
name = "good"
base_url = "{upstream_url}"
models = ["fake-*"]
api_key_env = "OVERNIGHT_TEST_UPSTREAM_KEY"
max_concurrency = 8

[[backends]]
name = "wrongkey"
base_url = "{upstream_url}"
models = ["gpt-wrongkey-*"]
api_key_env = "OVERNIGHT_TEST_WRONG_UPSTREAM_KEY"
max_concurrency = 8

[[webhooks]]
url = "{receiver_url}"
secret_env = "OVERNIGHT_TEST_WEBHOOK_SECRET"

[[prices]]
model = "fake-*"
input = 0.15
output = 0.60
"""


def good_lines() -> list[dict[str, Any]]:
    """Lines that succeed, and lines that fail with 500 (retried, then given up)."""
    lines = [chat_line(f"ok-{i}") for i in range(6)]
    return lines + [chat_line(f"e500-{i}", fake={"status": 500}) for i in range(2)]


def refused_lines() -> list[dict[str, Any]]:
    """Lines for the backend whose key the upstream refuses (one model per batch: a batch of their own)."""
    return [chat_line(f"e401-{i}", model="gpt-wrongkey-1") for i in range(2)]


@dataclass
class Setup:
    name: str
    root: Path
    env: dict[str, str]
    markers: dict[str, str]
    database_url: str | None = None
    seaweed: SeaweedS3 | None = None


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OVERNIGHT_", "AWS_"))}


def _with_password(dsn: str) -> str | None:
    """`dsn` with DB_PASSWORD in it, if the server still lets it in (trust auth ignores it)."""
    parts = urlsplit(dsn)
    if parts.hostname is None or parts.password is not None:
        return None
    user = parts.username or "postgres"
    port = f":{parts.port}" if parts.port else ""
    changed = urlunsplit(parts._replace(netloc=f"{user}:{DB_PASSWORD}@{parts.hostname}{port}"))

    async def answers() -> bool:
        try:
            conn = await asyncpg.connect(changed, timeout=5)
        except (OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return changed if asyncio.run(answers()) else None


@pytest.fixture(params=["sqlite-disk", "postgres-s3"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    markers = {
        "upstream api key": UPSTREAM_KEY,
        "second backend's upstream key": WRONG_UPSTREAM_KEY,
        "webhook secret": WEBHOOK_SECRET,
        "webhook secret's base64": WEBHOOK_SECRET.removeprefix("whsec_"),
        "webhook key bytes": WEBHOOK_KEY.decode(),
        "api key": API_KEY,
        "admin api key": ADMIN_KEY,
    }
    env = _clean_environment() | ENV
    if request.param == "sqlite-disk":
        yield Setup(request.param, tmp_path, env, markers)
        return
    found = postgres.server()
    database = asyncio.run(found.create_database())
    dsn = found.dsn(database)
    with SeaweedS3(tmp_path / "seaweed", access_key_id=S3_KEY_ID, secret_access_key=S3_SECRET) as s3:
        with_password = _with_password(dsn)
        if with_password is not None:
            markers["database password"] = DB_PASSWORD
        env |= {
            "OVERNIGHT_DATABASE_URL": with_password or dsn,
            "OVERNIGHT_BLOB_URL": f"s3://{s3.bucket}/secrets-{TAG}",
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "AWS_REGION": s3.region,
            "AWS_ACCESS_KEY_ID": S3_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        }
        markers |= {"s3 access key id": S3_KEY_ID, "s3 secret access key": S3_SECRET}
        try:
            yield Setup(request.param, tmp_path, env, markers, dsn, s3)
        finally:
            asyncio.run(found.drop_database(database))


def _keys(setup: Setup, config: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "overnight", "keys", *args]
    command += ["--data-dir", str(data_dir), "--config", str(config)]
    return subprocess.run(command, env=setup.env, capture_output=True, text=True, timeout=120)


def _keys_create(setup: Setup, config: Path, data_dir: Path) -> tuple[str | None, str]:
    """A key made with `overnight keys create`, when this build has the command; and what happened."""
    done = _keys(setup, config, data_dir, "create", "--project", "alpha", "--name", "marker")
    if done.returncode != 0 and "invalid choice" in done.stderr:
        return None, "no `overnight keys` command in this build: config-file keys only"
    assert done.returncode == 0, done.stderr
    last = (done.stdout.strip().splitlines() or [""])[-1].strip()  # the secret, on its own last line
    assert _KEY_PRINTED.fullmatch(last), f"`overnight keys create` printed no sk- key last: {done.stdout!r}"
    return last, "`overnight keys create` key used too"


def _run_batch(api: Recorder, lines: list[dict[str, Any]]) -> dict[str, Any]:
    form = {"purpose": "batch"}
    uploaded = api.ok("POST", "/v1/files", data=form, files={"file": ("in.jsonl", jsonl(lines))})
    body = {"input_file_id": uploaded["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch: dict[str, Any] = api.ok("POST", "/v1/batches", json=body)
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"batch still {batch['status']}"
        time.sleep(0.05)
        batch = api.ok("GET", f"/v1/batches/{batch['id']}")
    assert batch["status"] == "completed", batch.get("errors")
    return batch


def _error_lines(api: Recorder, batch: dict[str, Any]) -> dict[str, Any]:
    errors = api.ok("GET", f"/v1/files/{batch['error_file_id']}/content")
    return {line["custom_id"]: line for line in map(json.loads, errors.splitlines())}


def _files_and_errors(api: Recorder, batch: dict[str, Any], refused: dict[str, Any]) -> None:
    assert batch["request_counts"] == {"total": 8, "completed": 6, "failed": 2}, batch
    output = api.ok("GET", f"/v1/files/{batch['output_file_id']}/content")
    assert output.count(b"\n") == 6
    assert _error_lines(api, batch)["e500-0"]["response"]["status_code"] == 500
    assert refused["request_counts"] == {"total": 2, "completed": 0, "failed": 2}, refused
    line = _error_lines(api, refused)["e401-0"]
    assert line["response"]["status_code"] == 401, line
    assert "[the backend's API key]" in json.dumps(line), line
    api.ok("GET", "/v1/files")
    api.ok("GET", "/v1/batches?limit=10")
    api.ok("GET", f"/v1/files/{batch['input_file_id']}")
    api.ok("GET", "/v1/models")
    assert api.call("GET", "/v1/batches", key="").status_code == 401
    assert api.call("GET", "/v1/batches", key=API_KEY + "x").status_code == 401
    assert api.call("GET", "/v1/batches/batch_nothere").status_code == 404
    assert api.call("POST", "/v1/batches", json={"input_file_id": "file-x"}).status_code == 400


def _sync_requests(api: Recorder) -> None:
    message = [{"role": "user", "content": "hi"}]
    api.ok("POST", "/v1/chat/completions", json={"model": "fake-chat", "messages": message})
    refused = api.call("POST", "/v1/chat/completions", json={"model": "gpt-wrongkey-1", "messages": message})
    assert refused.status_code >= 400


def _dashboard(api: Recorder, batch: dict[str, Any], key: str, *, owner: bool = True) -> None:
    """Signed in with `key`, every page about `batch` (`owner`: the key's project owns it, so each page
    must answer 200; else the answers are kept whatever they are)."""
    api.http.cookies.clear()  # each sign-in from a fresh browser; the pages get the cookie below
    api.ok("GET", "/ui/signin", key="")
    signin = api.call(
        "POST",
        "/ui/signin",
        key="",
        data={"key": key, "next": "/"},
        headers={"Origin": api.root},
        follow_redirects=False,
    )
    assert signin.status_code == 303, signin.text[:300]
    api.answers[-1].headers = [h for h in api.answers[-1].headers if h[0].lower() != "set-cookie"]
    api.http.cookies.clear()
    cookie = {"Cookie": f"overnight_key={key}"}
    for path in (
        "/",
        "/ui/fragments/batches",
        f"/ui/batches/{batch['id']}",
        f"/ui/fragments/batches/{batch['id']}",
        f"/ui/files/{batch['output_file_id']}/content",
        f"/ui/files/{batch['error_file_id']}/content",
    ):
        answer = api.call("GET", path, key="", headers=cookie)
        assert answer.status_code == 200 or not owner, f"{path}: {answer.status_code}"
    api.call("GET", "/ui/batches/batch_nothere", key="", headers=cookie)


def _costs_and_metrics(api: Recorder) -> None:
    since = int(time.time()) - 86_400
    costs = api.ok("GET", f"/v1/organization/costs?start_time={since}")
    assert any(bucket["results"] for bucket in costs["data"]), costs
    api.ok("GET", f"/v1/organization/costs?start_time={since}&group_by=project_id", key=ADMIN_KEY)
    metrics = api.ok("GET", "/metrics", key="")
    assert b"overnight" in metrics
    api.ok("GET", "/health", key="")


def _flow(api: Recorder, receiver: WebhookReceiver) -> None:
    batch = _run_batch(api, good_lines())
    refused = _run_batch(api, refused_lines())
    wait_until(lambda: len(receiver.delivered()) >= 2, "the two batch.completed webhooks")
    events = {(e.type, e.data.id) for e in (r.unwrap(WEBHOOK_SECRET) for r in receiver.delivered())}
    assert events == {("batch.completed", batch["id"]), ("batch.completed", refused["id"])}
    _files_and_errors(api, batch, refused)
    _sync_requests(api)
    _dashboard(api, batch, api.key)
    _dashboard(api, batch, ADMIN_KEY, owner=False)
    _costs_and_metrics(api)


def _search_answers(markers: Markers, api: Recorder, receiver: WebhookReceiver) -> list[Hit]:
    hits: list[Hit] = []
    for index, answer in enumerate(api.answers):
        where = f"HTTP answer #{index} to {answer.where} ({answer.status})"
        hits += markers.search(answer.body, where + " body")
        hits += markers.search("\n".join(f"{k}: {v}" for k, v in answer.headers), where + " headers")
    for index, sent in enumerate(receiver.received):
        headers = "\n".join(f"{k}: {v}" for k, v in sent.headers.items())
        hits += markers.search(sent.body + b"\n" + headers.encode(), f"webhook request #{index}")
    return hits


async def _search_stores(markers: Markers, setup: Setup) -> tuple[list[Hit], int]:
    if setup.database_url is None or setup.seaweed is None:
        return [], 0
    hits = await scan_postgres(markers, setup.database_url)
    async with setup.seaweed.client() as s3:
        found, objects = await scan_bucket(markers, s3, setup.seaweed.bucket)
    return hits + found, objects


def test_the_scanner_finds_every_form() -> None:
    """The search itself: each encoding of a marker, inside other bytes at any offset, is found."""
    markers = Markers({"m": WEBHOOK_SECRET})
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = prefix + WEBHOOK_SECRET.encode() + b"tail"
        for encoded in (blob, base64.b64encode(blob), base64.urlsafe_b64encode(blob), blob.hex().encode()):
            assert markers.search(b"x" + encoded + b"y", "probe"), (prefix, encoded)
    assert markers.search(WEBHOOK_SECRET.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"), "q")
    assert not markers.search(WEBHOOK_SECRET[:-3], "a part only")


def _serve_and_search(setup: Setup, upstream: FakeUpstreamProcess, receiver: WebhookReceiver) -> Searched:
    config = setup.root / "overnight.toml"
    config.write_text(config_text(receiver.url("/hook"), upstream.base_url))
    data_dir = setup.root / "data"
    cli_key, keys_note = _keys_create(setup, config, data_dir)
    named = dict(setup.markers)
    if cli_key is not None:
        named["`overnight keys create` key"] = cli_key
    markers = Markers(named)
    server = OvernightServer(data_dir, config)
    server.env = setup.env
    api = Recorder(server.base_url.removesuffix("/v1"), cli_key or API_KEY)
    try:
        server.start()  # inside: a server that never got healthy is stopped too
        _flow(api, receiver)
        hits = _search_answers(markers, api, receiver)
        hits += scan_folder(markers, data_dir, "data dir (running)")
    finally:
        api.close()
        server.stop()
    hits += scan_folder(markers, data_dir, "data dir (stopped)")
    hits += markers.search(server.log(), "server log")
    if cli_key is not None:
        listed = _keys(setup, config, data_dir, "list")
        assert listed.returncode == 0, listed.stderr
        hits += markers.search(listed.stdout + listed.stderr, "`overnight keys list` output")
    found, objects = asyncio.run(_search_stores(markers, setup))
    return Searched(markers, hits + found, objects, keys_note)


@dataclass
class Searched:
    markers: Markers
    hits: list[Hit]
    objects: int  # in the bucket
    keys_note: str


def test_no_secret_is_written_anywhere(setup: Setup) -> None:
    upstream = FakeUpstreamProcess("--api-key", UPSTREAM_KEY, "--echo-key")
    try:
        with ReceiverThread(WebhookReceiver()) as receiver:
            searched = _serve_and_search(setup, upstream, receiver)
    finally:
        upstream.stop()
    if setup.seaweed is not None:
        assert searched.objects > 0, "no object in the bucket: the blobs did not go to S3"
    markers, hits = searched.markers, searched.hits
    print(
        f"{setup.name}: {len(markers.secrets)} markers; {searched.keys_note}; {len(markers.searched)} places"
    )
    assert not hits, f"{len(hits)} leak(s):\n{describe(hits)}"
