"""The price table and token budgets in the settings (config_prices.py): read from the config file only,
and each bad entry named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overnight.config import ConfigError, Settings, load_settings
from overnight.domain.pricing import Price


def settings_from(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "overnight.toml"
    path.write_text(text)
    return load_settings({"config": str(path)}, environ=environ or {})


def test_prices_and_budgets_from_the_config_file(tmp_path: Path) -> None:
    text = (
        '[[prices]]\nmodel = "gpt-4o-mini*"\ninput = 0.15\ncached_input = 0.075\noutput = 0.6\n'
        '[[prices]]\nmodel = "llama-*"\ninput = 0\noutput = 0\nbatch_discount = 0\n'
        '[[prices]]\nmodel = "gpt-4o*"\ninput = 2.5\noutput = 10\nbatch_input = 1.25\nbatch_output = 5\n'
        '[token_budgets]\n"team-a" = 2000000\n'
    )
    settings = settings_from(tmp_path, text, {"OVERNIGHT_DEFAULT_TOKEN_BUDGET": "500000"})
    assert settings.prices == (
        Price("gpt-4o-mini*", 0.15, 0.6, cached_input=0.075),
        Price("llama-*", 0.0, 0.0, batch_discount=0.0),
        Price("gpt-4o*", 2.5, 10.0, batch_input=1.25, batch_output=5.0),
    )
    assert settings.token_budgets == (("team-a", 2_000_000),)
    assert settings.default_token_budget == 500_000


def test_the_defaults_price_nothing_and_budget_nothing() -> None:
    settings = load_settings({}, environ={})
    assert (settings.prices, settings.token_budgets, settings.default_token_budget) == ((), (), None)


def test_prices_and_budgets_tables_are_config_file_only() -> None:
    settings = load_settings({}, environ={"OVERNIGHT_PRICES": "x", "OVERNIGHT_TOKEN_BUDGETS": "y"})
    assert (settings.prices, settings.token_budgets) == ((), ())


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('prices = "gpt"\n', "prices"),
        ("[[prices]]\ninput = 1\noutput = 1\n", "prices[0].model"),
        ('[[prices]]\nmodel = "m"\noutput = 1\n', "prices[0].input"),
        ('[[prices]]\nmodel = "m"\ninput = 1\n', "prices[0].output"),
        ('[[prices]]\nmodel = "m"\ninput = -1\noutput = 1\n', "prices[0].input"),
        ('[[prices]]\nmodel = "m"\ninput = "cheap"\noutput = 1\n', "prices[0].input"),
        ('[[prices]]\nmodel = "m"\ninput = 1\noutput = 1\nbatch_discount = 50\n', "prices[0].batch_discount"),
        (
            '[[prices]]\nmodel = "m"\ninput = 1\noutput = 1\nbatch_cached_input = true\n',
            "prices[0].batch_cached_input",
        ),
        (
            '[[prices]]\nmodel = "m"\ninput = 1\noutput = 1\n[[prices]]\nmodel = "n"\ninput = 1\nouput = 1\n',
            "prices[1].ouput",
        ),
        ('[[prices]]\nmodel = "m"\ninput = inf\noutput = 1\n', "prices[0].input"),
        ("token_budgets = 5\n", "token_budgets"),
        ('[token_budgets]\n"team-a" = 0\n', "token_budgets.team-a"),
        ('[token_budgets]\n"team-a" = 1.5\n', "token_budgets.team-a"),
        ('[token_budgets]\n"team-a" = "lots"\n', "token_budgets.team-a"),
        ("default_token_budget = -3\n", "default_token_budget"),
    ],
)
def test_bad_prices_and_budgets_are_named(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"setting '{named}'")):
        settings_from(tmp_path, text)


def test_a_bad_default_budget_in_the_environment_is_named() -> None:
    with pytest.raises(ConfigError, match="setting 'default_token_budget'"):
        load_settings({}, environ={"OVERNIGHT_DEFAULT_TOKEN_BUDGET": "many"})
