"""Counts in words that read right: "1 part", "3 parts", "1,200 lines"."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """`count` and `word`, or `many` (else `word` + "s") when `count` is not 1."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def rate(per_s: float, word: str = "line") -> str:
    """A rate such as "7,864 lines/s", "1 line/s" or "0.4 lines/s": whole numbers from 10 on."""
    text = f"{per_s:,.0f}" if per_s >= 10 else f"{per_s:.1f}".removesuffix(".0")
    return f"{text} {word if text == '1' else word + 's'}/s"
