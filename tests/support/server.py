"""Starting real processes for acceptance tests: `overnight serve` and the fake upstream."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 60.0
FAKE_UPSTREAM = Path(__file__).with_name("fake_upstream.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(method: str, url: str, payload: Any = None, timeout: float = 10.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_until_healthy(
    url: str, process: subprocess.Popen[bytes], timeout: float = STARTUP_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class FakeUpstreamProcess:
    """The fake model server as a subprocess, driven over its control endpoints."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(FAKE_UPSTREAM), "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"fake upstream failed to start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        self.root = self.base_url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", f"{self.root}/_stats")
        return result

    def control(self, **knobs: Any) -> None:
        http_json("POST", f"{self.root}/_control", knobs)

    def stop(self) -> None:
        stop_process(self.process)


class OvernightServer:
    """`overnight serve` in a subprocess on a free loopback port, restartable on the same data."""

    def __init__(
        self, data_dir: Path, config: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "overnight", "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir)]
        if self.config is not None:
            command += ["--config", str(self.config)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_until_healthy(f"http://127.0.0.1:{self.port}/health", self.process)

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """The log once it contains `text` (the server writes some lines after it answers /health)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server log after {timeout} s:\n{log[-2000:]}")
            time.sleep(0.05)
        return log


@contextlib.contextmanager
def running(server: OvernightServer) -> Iterator[OvernightServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
