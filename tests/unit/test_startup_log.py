"""What start-up says about each backend: where it is and what it serves, never a key."""

from __future__ import annotations

from overnight.backends.http import HttpBackend
from overnight.config import BackendConfig
from overnight.wiring import describe_backend


def test_a_backend_is_described_without_its_key_or_url_credentials() -> None:
    config = BackendConfig(
        name="vllm",
        base_url="http://admin:hunter2@gpu-1:8001/v1?token=abc",
        models=("llama-*",),
        max_concurrency=8,
    )
    backend = HttpBackend(config, api_key="sk-marker-secret", timeout_s=1)
    text = describe_backend(backend)
    assert text == "backend vllm at http://gpu-1:8001/v1 serves llama-* (max_concurrency 8)"
    assert "hunter2" not in text
    assert "sk-marker-secret" not in text
    assert "abc" not in text
