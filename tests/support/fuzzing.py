"""How many generated inputs the fuzz tests try, and a tally of those they did.

The tests marked `fuzz` run in every `make test` with a few examples each and a fixed seed
(Hypothesis's `derandomize`), so the fast suite stays fast and gives the same verdict on every run.
`make fuzz` sets OVERNIGHT_FUZZ_EXAMPLES: then each of them tries that many, from a random seed, and
the counts of inputs tried are printed at the end of the run (`pytest_terminal_summary`, which
tests/conftest.py takes from here).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings

EXAMPLES_VARIABLE = "OVERNIGHT_FUZZ_EXAMPLES"

tried: Counter[str] = Counter()  # what kind of input -> how many were tried in this run


def examples_override() -> int | None:
    """The examples `make fuzz` asks for, or None in the fast suite."""
    value = os.environ.get(EXAMPLES_VARIABLE, "").strip()
    return int(value) if value else None


def fuzz_settings(fast_examples: int, *, share: float = 1.0) -> settings:
    """Hypothesis settings for a fuzz test: `fast_examples` with a fixed seed in the fast suite; under
    `make fuzz`, `share` of the examples asked for (for tests whose examples cost more), random."""
    asked = examples_override()
    return settings(
        max_examples=fast_examples if asked is None else max(fast_examples, int(asked * share)),
        derandomize=asked is None,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def count(kind: str, n: int = 1) -> None:
    tried[kind] += n


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not tried:
        return
    terminalreporter.section("generated inputs tried")
    for kind, n in sorted(tried.items()):  # kinds overlap: "validator lines" counts the mutated ones too
        terminalreporter.write_line(f"{kind}: {n}")
