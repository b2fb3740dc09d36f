"""`prefix_ordering`, `prefix_lookahead` and `prefix_lookahead_mb` on `[[backends]]`: parsed, checked, and
handed to the scheduler of that backend only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overnight.config import ConfigError, load_settings
from overnight.engine.prefix_queue import PrefixOrdering
from overnight.wiring import engine_settings, prefix_orderings

BACKEND = '[[backends]]\nname = "{name}"\nbase_url = "http://127.0.0.1:8001/v1"\n'


def test_off_by_default(tmp_path: Path) -> None:
    settings = load_settings({"config": str(write(tmp_path, BACKEND.format(name="a")))}, environ={})
    (backend,) = settings.all_backends()
    assert (backend.prefix_ordering, backend.prefix_lookahead, backend.prefix_lookahead_mb) == (
        False,
        4096,
        16,
    )
    assert prefix_orderings(settings) == {}
    assert engine_settings(settings).prefix == {}


def test_on_for_the_backends_that_ask(tmp_path: Path) -> None:
    text = (
        BACKEND.format(name="a")
        + "prefix_ordering = true\nprefix_lookahead = 1000\nprefix_lookahead_mb = 8\n"
        + BACKEND.format(name="b")
    )
    settings = load_settings({"config": str(write(tmp_path, text))}, environ={})
    assert prefix_orderings(settings) == {"a": PrefixOrdering(1000, 8_000_000)}
    assert engine_settings(settings).prefix == {"a": PrefixOrdering(1000, 8_000_000)}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('prefix_ordering = "maybe"\n', "backends[0].prefix_ordering"),
        ("prefix_lookahead = 0\n", "backends[0].prefix_lookahead"),
        ("prefix_lookahead_mb = -1\n", "backends[0].prefix_lookahead_mb"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, line: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{named}")):
        load_settings({"config": str(write(tmp_path, BACKEND.format(name="a") + line))}, environ={})


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(text)
    return config
