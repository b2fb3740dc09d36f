"""A backend with a load_metrics_url in front of a real model server (docs/load-signal.md).

llama-cpp-python's server has no /metrics (the C++ `llama-server --metrics` has; its format is tested in
tests/integration/test_load_poller.py), so its load_metrics_url answers 404. The backend must keep working
and /metrics must report no load for it, rather than a stale or made-up figure. A second backend, whose
load_metrics_url serves llama.cpp's recorded exposition, shows the figures read in the running server.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from acceptance.conftest import make_client, read_lines, upload, wait_for
from support.llama_server import MODEL_ALIAS, LlamaServer, llama_server_missing
from support.server import OvernightServer

MISSING = llama_server_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
TIMEOUT_S = 180.0
RECORDED = (Path(__file__).parent.parent / "data" / "load" / "llamacpp.txt").read_bytes()


class RecordedMetrics(BaseHTTPRequestHandler):
    """llama.cpp's C++ server's /metrics, as recorded, for the backend that has one."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(RECORDED)))
        self.end_headers()
        self.wfile.write(RECORDED)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def recorded_metrics() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordedMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama-load") / "llama-server.log")
    yield server
    server.stop()


def metrics_url(llama: LlamaServer) -> str:
    return llama.base_url.removesuffix("/v1") + "/metrics"


def test_llama_cpp_python_has_no_metrics(llama: LlamaServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(metrics_url(llama), timeout=10)
    assert error.value.code == 404


def test_a_backend_whose_load_metrics_404_keeps_working_and_reports_no_load(
    llama: LlamaServer, recorded_metrics: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("overnight-load")
    config = root / "overnight.toml"
    config.write_text(
        "local_models = false\n"
        "worker_poll_interval_s = 0.1\n"
        "[[backends]]\n"
        'name = "llamacpp"\n'
        f'base_url = "{llama.base_url}"\n'
        f'models = ["{MODEL_ALIAS}"]\n'
        "max_concurrency = 2\n"
        f'load_metrics_url = "{metrics_url(llama)}"\n'
        "[[backends]]\n"  # a second backend whose server has /metrics: its figures show
        'name = "with-metrics"\n'
        f'base_url = "{llama.base_url}"\n'
        'models = ["no-such-model"]\n'
        f'load_metrics_url = "{recorded_metrics}"\n'
        'load_metrics_kind = "llamacpp"\n'
    )
    server = OvernightServer(root / "data", config)
    started = time.monotonic()
    server.start()
    try:
        client = make_client(server.base_url)
        lines = [
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL_ALIAS,
                    "messages": [{"role": "user", "content": "Name one colour."}],
                    "max_tokens": 4,
                    "temperature": 0,
                },
            }
            for i in range(2)
        ]
        file = upload(client, lines)
        batch = client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_for(client, batch.id, timeout=TIMEOUT_S)
        assert done.status == "completed"
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
        for line in read_lines(client, done.output_file_id):
            assert line["response"]["body"]["choices"][0]["message"]["content"]

        text = metrics_once_shown(server.port, 'overnight_backend_load_waiting{backend="with-metrics"} 1')
        assert 'overnight_backend_load_running{backend="with-metrics"} 1' in text
        assert 'overnight_backend_load_kv_cache_usage{backend="with-metrics"} 0.261719' in text
        assert 'backend="llamacpp"' in text  # its other figures show, but no load
        assert not [
            line
            for line in text.splitlines()
            if line.startswith("overnight_backend_load_") and 'backend="llamacpp"' in line
        ]
        minutes = (time.monotonic() - started) // 60
        assert 1 <= server.log().count("cannot read its load") <= minutes + 1  # once a minute at most
    finally:
        server.stop()


def metrics_once_shown(port: int, wanted: str) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = str(answer.read().decode())
        if wanted in text or time.monotonic() > deadline:
            assert wanted in text
            return text
        time.sleep(0.1)
