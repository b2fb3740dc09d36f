"""An upstream in nginx answering every request with one fixed chat.completion body: at once, or after a
fixed delay (`latency_ms`, with the echo module's `echo_sleep`).

nginx (one worker process) is used because it is far cheaper per request than any Python server, so the
client measured against it, not the upstream, sets the pace. `ensure_nginx()` installs Debian's
`nginx-light` with apt-get when no nginx is found (only when the bench runs, and it says so). The delayed
form needs the echo module (Debian's `libnginx-mod-http-echo`, which nginx-light pulls in): `echo_module()`
finds it, or says None.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from support.server import free_port

from .procs import children

CHAT_COMPLETION = {
    "id": "chatcmpl-bench0000000000000000000000",
    "object": "chat.completion",
    "created": 1_750_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "The answer is 4. Adding two and two gives four, a small even number.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 24,
        "completion_tokens": 18,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_bench0001",
}
BODY = json.dumps(CHAT_COMPLETION, separators=(",", ":"))

_CONF = """\
{load_module}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header x-request-id req_bench;
{answer}
        }}
    }}
}}
"""


_INSTANT = "            return 200 '{body}';"
# echo_sleep waits without blocking the worker; `echo -n` writes the body as is (chunked, no newline)
_DELAYED = "            echo_sleep {seconds};\n            echo -n '{body}';"
ECHO_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/local/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/lib64/nginx/modules/ngx_http_echo_module.so",
)


def echo_module() -> str | None:
    """The echo module's shared object, if installed."""
    return next((p for p in ECHO_MODULE_PATHS if Path(p).is_file()), None)


def _find() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )


def _quietly(command: list[str]) -> int:
    return subprocess.run(
        command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    ).returncode


def ensure_nginx() -> str:
    """The nginx executable, installing nginx-light with apt-get first if there is none."""
    found = _find()
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("nginx is not installed and apt-get is not available: install nginx first")
    install = [apt, "install", "-y", "--no-install-recommends", "nginx-light"]
    print(
        "bench: nginx not found; running: apt-get install -y --no-install-recommends nginx-light", flush=True
    )
    if _quietly(install) != 0:
        print("bench: that failed; running: apt-get update, then the install again", flush=True)
        _quietly([apt, "update"])
        _quietly(install)
    found = _find()
    if found is None:
        raise RuntimeError("could not install nginx (apt-get install nginx-light failed); install it by hand")
    return found


class Nginx:
    """nginx with one worker on a free loopback port, configured and logging in a temp folder; it answers
    at once, or after `latency_ms` (which needs the echo module: RuntimeError when it is missing)."""

    def __init__(self, latency_ms: float | None = None) -> None:
        self.executable = ensure_nginx()
        self.latency_ms = latency_ms
        load_module = ""
        answer = _INSTANT.format(body=BODY)
        if latency_ms is not None:
            module = echo_module()
            if module is None:
                raise RuntimeError("the nginx echo module is not installed (libnginx-mod-http-echo)")
            load_module = f"load_module {module};\n"
            answer = _DELAYED.format(seconds=f"{latency_ms / 1000:g}", body=BODY)
        self._folder = tempfile.TemporaryDirectory(prefix="overnight-bench-nginx-")
        self.prefix = Path(self._folder.name)
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root + "/v1"
        if any(c in BODY for c in "'$\\"):
            raise ValueError("the fixed body must not contain ', $ or \\ (nginx would read them)")
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            _CONF.format(load_module=load_module, prefix=self.prefix, port=self.port, answer=answer)
        )
        self.process = subprocess.Popen(
            [self.executable, "-p", str(self.prefix), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_listening()
        self.workers = self._wait_workers()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited with {self.process.returncode}: {error.strip()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("nginx did not start listening")

    def _wait_workers(self) -> list[int]:
        for _ in range(100):
            workers = children(self.process.pid)
            if workers:
                return workers
            time.sleep(0.02)
        return []

    @property
    def pids(self) -> list[int]:
        return [self.process.pid, *self.workers]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._folder.cleanup()

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
