"""Every Backend implementation as a `Harness`, and the fixtures that hand the backend contract tests
(tests/contract/test_backend*_contract.py) each one in turn, pointed at a real fake upstream server.
tests/contract/conftest.py makes the fixtures visible there."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from overnight.backends.base import Attempt, Backend
from overnight.backends.http import HttpBackend
from overnight.backends.local.backend import LocalBackend
from overnight.backends.local.embeddings import MiniLmEmbeddings
from overnight.backends.local.embeddings import is_available as embeddings_available
from overnight.config import BackendConfig
from support.fake_upstream import FakeUpstream
from support.local_models import EchoChat

CHAT = "/v1/chat/completions"
GENEROUS_S = 30.0


@dataclass
class Options:
    base_url: str
    max_concurrency: int = 4
    timeout_s: float = GENEROUS_S
    api_key: str | None = None


def make_http(options: Options) -> Backend:
    config = BackendConfig(name="test", base_url=options.base_url, max_concurrency=options.max_concurrency)
    return HttpBackend(config, api_key=options.api_key, timeout_s=options.timeout_s)


@functools.cache
def shared_embeddings() -> MiniLmEmbeddings:
    return MiniLmEmbeddings(batch_size=8)  # loads once, on first use; each backend starts and closes it


def make_local(options: Options) -> Backend:
    aliases = {"fake-chat": "echo-chat", "fake-embed": "all-minilm-l6-v2"}
    return LocalBackend([shared_embeddings(), EchoChat()], aliases)


@dataclass(frozen=True)
class Harness:
    make: Callable[[Options], Backend]
    forwards: bool  # requests reach FakeUpstream, so `fake` directives and its counters apply
    endpoints: frozenset[str] | None = None  # those it serves; None: all

    def require_forwarding(self) -> None:
        if not self.forwards:
            pytest.skip("this backend does not forward requests to an upstream")

    def require_endpoint(self, endpoint: str) -> None:
        if self.endpoints is not None and endpoint not in self.endpoints:
            pytest.skip(f"this backend does not serve {endpoint}")


LOCAL_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
IMPLEMENTATIONS = [
    pytest.param(Harness(make_http, forwards=True), id="http"),
    pytest.param(
        Harness(make_local, forwards=False, endpoints=LOCAL_ENDPOINTS),
        id="local",
        marks=pytest.mark.skipif(not embeddings_available(), reason="local embeddings not installed"),
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def harness(request: pytest.FixtureRequest) -> Harness:
    value: Harness = request.param
    return value


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@dataclass
class Run:
    backend: Backend
    options: Options
    fake: FakeUpstream

    async def attempt(self, body: dict[str, Any], endpoint: str = CHAT) -> Attempt:
        return await asyncio.wait_for(self.backend.attempt(endpoint, json.dumps(body).encode()), 120)


@pytest.fixture
def run_with(harness: Harness, fake: FakeUpstream) -> Callable[..., Any]:
    """`async with run_with(**options) as run:` a started backend pointed at the fake."""

    @asynccontextmanager
    async def open_run(**overrides: Any) -> AsyncIterator[Run]:
        options = Options(base_url=fake.base_url, **overrides)
        backend = harness.make(options)
        await backend.start()
        try:
            yield Run(backend, options, fake)
        finally:
            await backend.close()

    return open_run


def chat(key: str, **fake: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    body["fake"] = {"key": key, **fake}
    return body


def error_of(answer: Attempt) -> dict[str, Any]:
    body = json.loads(answer.body)
    assert isinstance(body, dict)
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    return dict(error)
