"""Parsing the price table and the token budgets of the settings (docs/costs.md).

```toml
[[prices]]
model = "gpt-4o-mini*"     # a glob; the first entry that matches a model is its price
input = 0.15               # USD per million input tokens
cached_input = 0.075       # optional; default: as input
output = 0.60
batch_discount = 0.5       # optional, default 0.5; or batch_input / batch_cached_input / batch_output

[token_budgets]
"team-a" = 2000000         # enqueued tokens; default_token_budget applies to every other project
```
"""

from __future__ import annotations

import math
from typing import Any

from overnight.config_values import ConfigError
from overnight.domain.pricing import Price

PRICE_KEYS = (
    *("model", "input", "output", "cached_input", "batch_discount"),
    *("batch_input", "batch_cached_input", "batch_output"),
)


def _usd(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"setting '{name}': expected a price in USD per million tokens, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"setting '{name}': a price must be a number of 0 or more, got {value!r}")
    return float(value)


def _optional_usd(name: str, value: Any) -> float | None:
    return None if value is None else _usd(name, value)


def _discount(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"setting '{name}': expected a fraction from 0 to 1 (0.5 is 50 %), got {value!r}")
    return float(value)


def _price(where: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise ConfigError(f"setting '{where}': expected a table with model, input and output")
    unknown = sorted(set(entry) - set(PRICE_KEYS))
    if unknown:
        known = ", ".join(PRICE_KEYS)
        raise ConfigError(f"setting '{where}.{unknown[0]}': unknown price setting (known: {known})")
    pattern = entry.get("model")
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"setting '{where}.model': expected a model name or glob such as \"gpt-4o*\"")
    for required in ("input", "output"):
        if required not in entry:
            raise ConfigError(f"setting '{where}.{required}': missing; the price of {pattern!r} needs it")
    return Price(
        pattern=pattern,
        input=_usd(f"{where}.input", entry["input"]),
        output=_usd(f"{where}.output", entry["output"]),
        cached_input=_optional_usd(f"{where}.cached_input", entry.get("cached_input")),
        batch_discount=_discount(f"{where}.batch_discount", entry.get("batch_discount", 0.5)),
        batch_input=_optional_usd(f"{where}.batch_input", entry.get("batch_input")),
        batch_cached_input=_optional_usd(f"{where}.batch_cached_input", entry.get("batch_cached_input")),
        batch_output=_optional_usd(f"{where}.batch_output", entry.get("batch_output")),
    )


def parse_prices(name: str, value: Any) -> tuple[Price, ...]:
    """`[[prices]]` tables, in order."""
    if not isinstance(value, list):
        raise ConfigError(f"setting '{name}': expected [[{name}]] tables with model, input and output")
    return tuple(_price(f"{name}[{index}]", entry) for index, entry in enumerate(value))


def _tokens(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"setting '{name}': expected a whole number of tokens, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"setting '{name}': expected a whole number of tokens, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"setting '{name}': a token budget must be positive, got {value!r}")
    return number


def parse_token_budgets(name: str, value: Any) -> tuple[tuple[str, int], ...]:
    """A `[token_budgets]` table of project = enqueued tokens."""
    if not isinstance(value, dict):
        raise ConfigError(f"setting '{name}': expected a [{name}] table of \"project\" = tokens")
    budgets = []
    for project, tokens in value.items():
        if not project:
            raise ConfigError(f"setting '{name}': a project name may not be empty")
        budgets.append((project, _tokens(f"{name}.{project}", tokens)))
    return tuple(budgets)


def parse_optional_budget(name: str, value: Any) -> int | None:
    """One budget for every project without its own (a number, also from the environment)."""
    return None if value in (None, "") else _tokens(name, value)
