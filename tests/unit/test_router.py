"""Routing a model name to the first backend whose patterns match."""

from __future__ import annotations

import fnmatch

import pytest

from overnight.backends.base import Attempt, Backend, StreamAnswer
from overnight.backends.http import HttpBackend
from overnight.backends.router import Router
from overnight.config import BackendConfig


class StubBackend:
    def __init__(self, name: str, *patterns: str, fail_start: bool = False, fail_close: bool = False) -> None:
        self.name = name
        self.max_concurrency = 4
        self.patterns = patterns
        self.fail_start = fail_start
        self.fail_close = fail_close
        self.serves_calls = 0
        self.events: list[str] = []

    def serves(self, model: str) -> bool:
        self.serves_calls += 1
        return any(fnmatch.fnmatchcase(model, p) for p in self.patterns)

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.events.append("start")

    async def close(self) -> None:
        self.events.append("close")
        if self.fail_close:
            raise RuntimeError(f"{self.name} cannot close")

    async def attempt(self, endpoint: str, body: bytes) -> Attempt:
        return Attempt(200, b"{}", "req_stub")

    async def stream(self, endpoint: str, body: bytes) -> Attempt | StreamAnswer:
        return await self.attempt(endpoint, body)  # answers whole


def test_first_matching_backend_wins() -> None:
    gpt, local, rest = (
        StubBackend("gpt", "gpt-*"),
        StubBackend("local", "llama-*", "qwen*"),
        StubBackend("rest", "*"),
    )
    router = Router([gpt, local, rest])
    assert router.backend_for("gpt-4o-mini") is gpt
    assert router.backend_for("qwen2.5") is local
    assert router.backend_for("llama-3") is local
    assert router.backend_for("mistral") is rest


def test_no_match_gives_none() -> None:
    router = Router([StubBackend("gpt", "gpt-*")])
    assert router.backend_for("claude") is None
    assert Router([]).backend_for("anything") is None


def test_results_are_cached() -> None:
    gpt = StubBackend("gpt", "gpt-*")
    router = Router([gpt])
    for _ in range(5):
        assert router.backend_for("gpt-4o") is gpt
        assert router.backend_for("other") is None
    assert gpt.serves_calls == 2


def test_cache_stays_bounded() -> None:
    router = Router([StubBackend("all", "*")])
    for n in range(10_000):
        router.backend_for(f"model-{n}")
    assert len(router._cache) <= 4096


def test_http_backend_patterns_are_case_sensitive_globs() -> None:
    config = BackendConfig(name="b", base_url="http://127.0.0.1:9/v1", models=("gpt-4o*", "llama-[23]-?b"))
    backend = HttpBackend(config, api_key=None, timeout_s=1)
    router = Router([backend])
    assert router.backend_for("gpt-4o-mini") is backend
    assert router.backend_for("llama-3-8b") is backend
    assert router.backend_for("GPT-4o") is None
    assert router.backend_for("llama-4-8b") is None
    assert router.backend_for("xgpt-4o") is None


def test_stub_is_a_backend() -> None:
    backend: Backend = StubBackend("x", "*")
    assert backend.serves("m")


async def test_start_and_close_reach_every_backend() -> None:
    a, b = StubBackend("a", "*"), StubBackend("b", "*")
    router = Router([a, b])
    await router.start()
    await router.close()
    assert a.events == ["start", "close"]
    assert b.events == ["start", "close"]


async def test_failed_start_closes_the_started_ones() -> None:
    a, b, c = StubBackend("a", "*"), StubBackend("b", "*", fail_start=True), StubBackend("c", "*")
    with pytest.raises(RuntimeError, match="b cannot start"):
        await Router([a, b, c]).start()
    assert a.events == ["start", "close"]
    assert c.events == []


async def test_close_reaches_all_even_when_one_fails() -> None:
    a, b = StubBackend("a", "*", fail_close=True), StubBackend("b", "*")
    with pytest.raises(RuntimeError, match="a cannot close"):
        await Router([a, b]).close()
    assert a.events == ["close"]
    assert b.events == ["close"]
