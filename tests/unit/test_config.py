"""Settings: precedence flag > env > file > default, and one clear message per bad setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overnight.config import ApiKey, ConfigError, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings({}, environ={})
    assert (settings.host, settings.port, settings.completion_windows) == ("127.0.0.1", 8000, ("24h",))
    assert settings.all_backends() == ()


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", 'port = 7000\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    settings = load_settings(
        {"port": "9000", "config": str(config)},
        environ={"OVERNIGHT_PORT": "8500", "OVERNIGHT_HOST": "127.0.0.2"},
    )
    assert settings.port == 9000
    assert settings.host == "127.0.0.2"
    assert settings.log_level == "debug"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "port = 7001\n")
    assert load_settings({}, environ={"OVERNIGHT_CONFIG": str(config)}).port == 7001


def test_backends_and_upstream_catch_all(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.toml",
        '[[backends]]\nname = "vllm"\nbase_url = "http://127.0.0.1:8001/v1/"\nmodels = ["llama*"]\n'
        "max_concurrency = 8\n",
    )
    settings = load_settings({"config": str(config), "upstream": "http://127.0.0.1:9/v1"}, environ={})
    vllm, catch_all = settings.all_backends()
    assert (vllm.name, vllm.base_url, vllm.models, vllm.max_concurrency) == (
        "vllm",
        "http://127.0.0.1:8001/v1",
        ("llama*",),
        8,
    )
    assert (catch_all.base_url, catch_all.models) == ("http://127.0.0.1:9/v1", ("*",))


def test_api_keys_from_environment() -> None:
    settings = load_settings({}, environ={"OVERNIGHT_API_KEYS": "k1=alpha, k2=beta"})
    assert settings.api_keys == (ApiKey("k1", "alpha"), ApiKey("k2", "beta"))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("port = 70000\n", "port"),
        ('port = "abc"\n', "port"),
        ("colour = 1\n", "colour"),
        ('completion_windows = ["24 hours"]\n', "completion_windows"),
        ('[[backends]]\nname = "x"\nbase_url = "ftp://host"\n', "backends[0].base_url"),
        ('[[backends]]\nbase_url = "http://h"\n', "backends[0].name"),
        (
            '[[backends]]\nname = "x"\nbase_url = "http://h"\nmax_concurrency = 0\n',
            "backends[0].max_concurrency",
        ),
        ('[[backends]]\nname = "x"\nbase_url = "http://h"\nspeed = 1\n', "backends[0].speed"),
        ('[[api_keys]]\nkey = "k"\n', "api_keys[0].project"),
        ("this is not toml", "config"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    config = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=re.escape(f"'{named}")):
        load_settings({"config": str(config)}, environ={})


def test_bad_environment_value_is_named() -> None:
    with pytest.raises(ConfigError, match="'request_timeout_s'"):
        load_settings({}, environ={"OVERNIGHT_REQUEST_TIMEOUT_S": "-1"})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'config'"):
        load_settings({"config": str(tmp_path / "nope.toml")}, environ={})
