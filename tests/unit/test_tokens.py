"""The input-token estimate and the budgets (domain/tokens.py)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overnight.domain.tokens import (
    InputEstimate,
    TokenBudgets,
    estimate_line,
    over_budget,
    token_limit_message,
)


def line(body: dict[str, Any]) -> bytes:
    return json.dumps(
        {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": body}
    ).encode()


def test_chat_messages_count_their_text_at_four_bytes_a_token() -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "a" * 40},
            {
                "role": "user",
                "content": [{"type": "text", "text": "b" * 20}, {"type": "image_url", "image_url": {}}],
            },
        ],
        "temperature": 0.5,  # not prompt text
    }
    found = estimate_line(line(body))
    assert (found.tokens, found.model) == (15, "gpt-4o-mini")


def test_inputs_prompts_instructions_and_token_arrays() -> None:
    assert estimate_line(line({"model": "e", "input": "abcd" * 3})).tokens == 3
    assert estimate_line(line({"model": "e", "input": ["abcd", "abcdefgh"]})).tokens == 3
    assert estimate_line(line({"model": "e", "input": [[1, 2, 3], [4, 5]]})).tokens == 5  # token for token
    assert estimate_line(line({"model": "c", "prompt": "x"})).tokens == 1  # any text is a token at least
    responses = {"model": "r", "instructions": "abcd", "input": [{"role": "user", "content": "abcdabcd"}]}
    assert estimate_line(line(responses)).tokens == 3
    assert estimate_line(line({"model": "e", "input": "é" * 2})).tokens == 1  # UTF-8 bytes, not characters


def test_lines_that_are_not_requests_count_nothing() -> None:
    for raw in (b"", b"not json", b"[1, 2]", b'{"body": "text"}', b'{"custom_id": "x"}', b"\xff\xfe"):
        assert estimate_line(raw).tokens == 0


@given(st.binary(max_size=300))
def test_any_bytes_get_an_estimate_never_an_exception(raw: bytes) -> None:
    assert estimate_line(raw).tokens >= 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["content", "text", "x"]), inner)
    ),
    max_leaves=10,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a shared machine may be slow
@given(st.dictionaries(st.sampled_from(["messages", "input", "prompt", "model", "n"]), json_values))
def test_any_body_gets_an_estimate(body: dict[str, Any]) -> None:
    assert estimate_line(line(body)).tokens >= 0


def test_a_file_adds_its_lines_up_and_keeps_the_first_model() -> None:
    estimate = InputEstimate()
    for raw in (
        b"garbage",
        line({"model": "m1", "input": "abcd"}),
        line({"model": "m2", "input": "abcdabcd"}),
    ):
        estimate.add(raw)
    assert (estimate.tokens, estimate.model) == (3, "m1")


def test_budgets_per_project_then_the_default() -> None:
    budgets = TokenBudgets({"team-a": 100}, default=50)
    assert budgets.budget_of("team-a") == 100
    assert budgets.budget_of("team-b") == 50
    assert TokenBudgets({"team-a": 100}).budget_of("team-b") is None
    assert not over_budget(60, 40, 100)  # exactly at the budget is within it
    assert over_budget(60, 41, 100)
    assert over_budget(0, 101, 100)  # one batch alone larger than the budget


def test_the_refusal_says_what_openai_says() -> None:
    assert token_limit_message("gpt-4o-mini", "team-a", 2_000_000) == (
        "Enqueued token limit reached for gpt-4o-mini in organization team-a. Limit: 2,000,000 enqueued "
        "tokens. Please try again once some in_progress batches have been completed."
    )
