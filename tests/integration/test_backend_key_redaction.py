"""An upstream that repeats the key it was sent in an error answer (some servers do, on a 401): the real HTTP
backend hides that key before the answer goes anywhere (error file, log line, synchronous client)."""

from __future__ import annotations

import json

from overnight.backends.http import REDACTED_KEY, HttpBackend
from overnight.config import BackendConfig
from support.fake_upstream import FakeUpstream

RIGHT_KEY = "sk-right-key-for-the-fake-0001"
WRONG_KEY = "sk-wrong-key-the-fake-repeats-0002"
BODY = json.dumps({"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def _attempt(base_url: str, key: str) -> tuple[int, bytes]:
    backend = HttpBackend(BackendConfig(name="fake", base_url=base_url), api_key=key, timeout_s=10)
    await backend.start()
    try:
        answer = await backend.attempt("/v1/chat/completions", BODY)
    finally:
        await backend.close()
    return answer.status, answer.body


async def test_an_error_answer_that_repeats_the_key_has_it_hidden() -> None:
    async with FakeUpstream(api_key=RIGHT_KEY, echo_key=True) as fake:
        status, body = await _attempt(fake.base_url, WRONG_KEY)
    assert status == 401
    assert WRONG_KEY.encode() not in body
    assert REDACTED_KEY in body
    assert json.loads(body)["error"]["type"] == "authentication_error"  # still the upstream's JSON


async def test_a_success_is_kept_byte_for_byte() -> None:
    async with FakeUpstream(api_key=RIGHT_KEY, echo_key=True) as fake:
        status, body = await _attempt(fake.base_url, RIGHT_KEY)
    assert status == 200
    assert json.loads(body)["choices"]
