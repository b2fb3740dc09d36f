#!/usr/bin/env python3
"""Run an Overnight cluster on one machine: API servers and workers sharing PostgreSQL and S3.

    export OVERNIGHT_DATABASE_URL=postgresql://overnight@127.0.0.1:5432/overnight
    export OVERNIGHT_BLOB_URL=s3://overnight/files AWS_ENDPOINT_URL=http://127.0.0.1:8333
    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
    python deploy/local_cluster.py up ./cluster --api-servers 2 --workers 3 --config overnight.toml
    python deploy/local_cluster.py status ./cluster
    python deploy/local_cluster.py restart ./cluster api-1
    python deploy/local_cluster.py down ./cluster

`up` runs `overnight migrate` once, then `overnight serve --no-worker` on ports PORT, PORT+1, ... and
`overnight worker --metrics-port` on the ports after those, each with its own log in the cluster folder,
and waits until every one answers /health. It writes `cluster.json` there: each process's name, pid,
port, command and log. Every process gets the same settings: this environment and `--config`.
It uses only the standard library and the `overnight` command beside this Python (or on PATH).
The deployment guide (docs/deployment.md) explains the topology; the acceptance test
tests/acceptance/test_cluster.py runs this very script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

STATE = "cluster.json"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def overnight_command() -> list[str]:
    beside = Path(sys.executable).with_name("overnight")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("overnight")
    return [found] if found else [sys.executable, "-m", "overnight"]


def _fail(message: str) -> None:
    print(f"local_cluster: error: {message}", file=sys.stderr)
    sys.exit(2)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _start(entry: dict[str, Any], folder: Path) -> None:
    with (folder / entry["log"]).open("ab") as log:
        process = subprocess.Popen(
            entry["command"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=folder
        )
    entry["pid"] = process.pid


def _wait_healthy(entries: list[dict[str, Any]], folder: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = list(entries)
    while waiting:
        for entry in list(waiting):
            if _healthy(entry["port"]):
                waiting.remove(entry)
            elif not _alive(entry["pid"]):
                tail = (folder / entry["log"]).read_text(errors="replace")[-2000:]
                _fail(f"{entry['name']} exited before it answered /health; its log ends:\n{tail}")
        if waiting and time.monotonic() > deadline:
            _fail(
                f"{', '.join(e['name'] for e in waiting)} did not answer /health in {STARTUP_TIMEOUT_S:g} s"
            )
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child of ours that exited is a zombie until reaped
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def _stop(entry: dict[str, Any]) -> None:
    pid = entry.get("pid")
    if not pid or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def _load(folder: Path) -> dict[str, Any]:
    path = folder / STATE
    if not path.exists():
        _fail(f"no {STATE} in {folder}: run `up` first")
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def _save(folder: Path, state: dict[str, Any]) -> None:
    (folder / STATE).write_text(json.dumps(state, indent=2) + "\n")


def up(args: argparse.Namespace) -> None:
    if not os.environ.get("OVERNIGHT_DATABASE_URL"):
        _fail("set OVERNIGHT_DATABASE_URL: a cluster shares one PostgreSQL database")
    if not os.environ.get("OVERNIGHT_BLOB_URL"):
        _fail("set OVERNIGHT_BLOB_URL (s3://bucket/prefix) and the AWS_* variables: a cluster shares S3")
    folder: Path = args.folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / STATE).exists() and any(_alive(e.get("pid", 0)) for e in _load(folder)["processes"]):
        _fail(f"a cluster already runs from {folder}: `down` it first")
    base = [*overnight_command()]
    common = ["--data-dir", str(folder / "data"), "--log-level", args.log_level]
    if args.config:
        common += ["--config", str(Path(args.config).resolve())]
    migrated = subprocess.run([*base, "migrate", *common], capture_output=True, text=True, check=False)
    if migrated.returncode != 0:
        _fail(f"overnight migrate failed: {migrated.stderr.strip()}")
    processes: list[dict[str, Any]] = []
    port = args.port
    for index in range(1, args.api_servers + 1):
        command = [*base, "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port), *common]
        processes.append({"name": f"api-{index}", "role": "api", "port": port, "command": command})
        port += 1
    for index in range(1, args.workers + 1):
        command = [*base, "worker", "--metrics-port", str(port), *common]
        processes.append({"name": f"worker-{index}", "role": "worker", "port": port, "command": command})
        port += 1
    for entry in processes:
        entry["log"] = f"{entry['name']}.log"
        _start(entry, folder)
    state = {"folder": str(folder), "processes": processes}
    _save(folder, state)
    _wait_healthy(processes, folder)
    for entry in processes:
        where = f"http://127.0.0.1:{entry['port']}" + ("/v1" if entry["role"] == "api" else "/metrics")
        print(f"{entry['name']:<10} pid {entry['pid']:<8} {where}")


def status(args: argparse.Namespace) -> None:
    for entry in _load(args.folder.resolve())["processes"]:
        state = "healthy" if _healthy(entry["port"]) else ("running" if _alive(entry["pid"]) else "stopped")
        print(f"{entry['name']:<10} pid {entry['pid']:<8} port {entry['port']:<6} {state}")


def restart(args: argparse.Namespace) -> None:
    folder = args.folder.resolve()
    state = _load(folder)
    entry = next((e for e in state["processes"] if e["name"] == args.name), None)
    if entry is None:
        _fail(f"no process named {args.name!r} (see `status`)")
    assert entry is not None
    _stop(entry)
    _start(entry, folder)
    _save(folder, state)
    _wait_healthy([entry], folder)
    print(f"{entry['name']} restarted: pid {entry['pid']}")


def down(args: argparse.Namespace) -> None:
    folder = args.folder.resolve()
    state = _load(folder)
    for entry in state["processes"]:
        _stop(entry)
    print(f"stopped {len(state['processes'])} process(es)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="local_cluster.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="migrate, start the processes, wait until all are healthy")
    start.add_argument("folder", type=Path, help="where logs and cluster.json go")
    start.add_argument("--api-servers", type=int, default=2)
    start.add_argument("--workers", type=int, default=3)
    start.add_argument("--port", type=int, default=8000, help="the first API server's port; the rest follow")
    start.add_argument("--config", help="TOML config file every process reads")
    start.add_argument("--log-level", default="info")
    for name, helptext in (("status", "each process and whether it answers"), ("down", "stop every process")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("folder", type=Path)
    again = commands.add_parser("restart", help="stop one process (SIGTERM) and start it again")
    again.add_argument("folder", type=Path)
    again.add_argument("name", help="api-1, worker-2, ...")
    args = parser.parse_args(argv)
    {"up": up, "status": status, "restart": restart, "down": down}[args.command](args)


if __name__ == "__main__":
    main()
