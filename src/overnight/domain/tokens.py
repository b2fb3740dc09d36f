"""Estimating a batch's input tokens before it runs, and the projects' enqueued-token budgets (pure).

The estimate reads only the prompt-bearing text of each line (a chat request's `messages` content, an
embedding's or a response's `input`, a completion's `prompt`, a response's `instructions`) at about
BYTES_PER_TOKEN UTF-8 bytes a token, and counts token arrays (`input: [[1, 2, 3]]`) token for token.
It is an estimate, not a tokenizer: real counts for English text are near it, others may differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

BYTES_PER_TOKEN = 4
PROMPT_FIELDS = ("messages", "input", "prompt", "instructions")
TEXT_KEYS = ("content", "text")  # where a message or a content part keeps its text
MAX_DEPTH = 32  # deeper than any request: a line nested further counts no text below it
TOKEN_LIMIT_CODE = "token_limit_exceeded"


class _Line(msgspec.Struct):
    body: Any = None


_line_decoder = msgspec.json.Decoder(_Line)


def _measure(value: object, depth: int = 0) -> tuple[int, int]:
    """(UTF-8 bytes of text, token ids) in a prompt value: strings, token arrays, messages and parts."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace")), 0
    if isinstance(value, bool) or depth > MAX_DEPTH:
        return 0, 0
    if isinstance(value, int):
        return 0, 1  # one element of a token array
    if isinstance(value, list):
        parts = [_measure(item, depth + 1) for item in value]
        return sum(text for text, _ in parts), sum(ids for _, ids in parts)
    if isinstance(value, dict):
        parts = [_measure(value[key], depth + 1) for key in TEXT_KEYS if key in value]
        return sum(text for text, _ in parts), sum(ids for _, ids in parts)
    return 0, 0


@dataclass(frozen=True, slots=True)
class LineEstimate:
    tokens: int
    model: str | None


def estimate_line(raw: bytes) -> LineEstimate:
    """The estimated input tokens of one JSONL request line and the model it names; a line that is
    not a request (blank, not JSON, no body) counts 0 (validation will say what is wrong with it)."""
    try:
        body = _line_decoder.decode(raw).body
    except (msgspec.DecodeError, msgspec.ValidationError):
        return LineEstimate(0, None)
    if not isinstance(body, dict):
        return LineEstimate(0, None)
    text = ids = 0
    for name in PROMPT_FIELDS:
        if name in body:
            found_text, found_ids = _measure(body[name])
            text, ids = text + found_text, ids + found_ids
    model = body.get("model")
    tokens = -(-text // BYTES_PER_TOKEN) + ids  # rounded up: any text is at least a token
    return LineEstimate(tokens, model if isinstance(model, str) and model else None)


@dataclass
class InputEstimate:
    """Line estimates added up as the lines of an input file go by; `model` is the first one named."""

    tokens: int = 0
    model: str | None = None

    def add(self, raw: bytes) -> None:
        line = estimate_line(raw)
        self.tokens += line.tokens
        if self.model is None:
            self.model = line.model


@dataclass(frozen=True, slots=True)
class TokenBudgets:
    """Enqueued-token budgets: a project's own, else `default` (None: no budget, nothing is read)."""

    per_project: Mapping[str, int] = field(default_factory=dict)
    default: int | None = None

    def budget_of(self, project: str) -> int | None:
        return self.per_project.get(project, self.default)


def over_budget(enqueued: int, estimate: int, budget: int) -> bool:
    """Whether a batch of `estimate` tokens may not join `enqueued` tokens under `budget`."""
    return enqueued + estimate > budget


def token_limit_message(model: str | None, project: str, budget: int) -> str:
    """OpenAI's words for a batch refused by the enqueued-token limit."""
    return (
        f"Enqueued token limit reached for {model or 'this model'} in organization {project}. "
        f"Limit: {budget:,} enqueued tokens. Please try again once some in_progress batches have been "
        "completed."
    )
