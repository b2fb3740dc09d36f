"""Each fault of the chaos upstream (tests/support/chaos_upstream.py), one at a time, through the real
HTTP backend: what it becomes (status, answered or not) and the words its error says (SAYS)."""

from __future__ import annotations

import json

import pytest

from overnight.backends.http import HttpBackend
from overnight.config import BackendConfig
from support.chaos_upstream import NO_ANSWER, SAYS, SUCCESSES, ChaosUpstream, Fault, marker

TIMEOUT_S = 1.0


def _body(name: str) -> bytes:
    return json.dumps(
        {"model": "fake-chat", "messages": [{"role": "user", "content": marker(name)}]}
    ).encode()


@pytest.mark.parametrize("fault", list(Fault), ids=lambda fault: fault.name.lower())
async def test_each_fault_becomes_an_attempt_that_says_what_happened(fault: Fault) -> None:
    chaos = ChaosUpstream(seed=1, mix={fault: 1.0}, stall_s=3 * TIMEOUT_S, huge_sizes=(2_000_000,))
    with chaos.running():
        config = BackendConfig(name="chaos", base_url=chaos.base_url, max_concurrency=2)
        backend = HttpBackend(config, api_key=None, timeout_s=TIMEOUT_S)
        await backend.start()
        try:
            answers = [await backend.attempt("/v1/chat/completions", _body("line")) for _ in range(2)]
        finally:
            await backend.close()
    assert chaos.faults_by_line["line"] == [fault, fault]  # the connection is reused, or not, rightly
    for answer in answers:
        body = json.loads(answer.body)
        if fault in SUCCESSES:
            assert (answer.status, answer.answered) == (200, True)
            assert body["choices"][0]["message"]["content"]
            if fault is Fault.HUGE:
                assert len(answer.body) > 2_000_000
            continue
        status, words = SAYS[fault]
        assert answer.status == status
        assert answer.answered is (fault not in NO_ANSWER)
        message = body["error"]["message"].lower()
        assert all(word in message for word in words), (words, message)
    if fault is Fault.RATE_LIMITED_RETRY_AFTER:
        assert answers[0].retry_after == pytest.approx(0.02)
    if fault is Fault.RATE_LIMITED:
        assert answers[0].retry_after is None


def test_the_same_seed_gives_each_line_the_same_faults() -> None:
    first, second, other = ChaosUpstream(seed=5), ChaosUpstream(seed=5), ChaosUpstream(seed=6)
    names = [f"l{index}" for index in range(200)]
    drawn = [[chaos.choose(name) for name in names for _ in range(3)] for chaos in (first, second, other)]
    assert drawn[0] == drawn[1]
    assert drawn[0] != drawn[2]
    assert first.requests_by_line["l7"] == 3
    assert sum(first.injected().values()) == 600
