"""Checks of answers against the official SDK's types."""

from __future__ import annotations

from typing import Any

from openai import BaseModel as OpenAIModel


def no_unknown_keys(validated: OpenAIModel) -> None:
    """No key the SDK's type does not know, at any depth of a validated answer."""
    stack: list[Any] = [validated]
    while stack:
        item = stack.pop()
        if isinstance(item, OpenAIModel):
            assert not item.model_extra, f"{type(item).__name__} has unknown keys {item.model_extra}"
            stack.extend(getattr(item, name) for name in type(item).model_fields)
        elif isinstance(item, list):
            stack.extend(item)
