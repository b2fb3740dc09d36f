"""`[[webhooks]]` settings: defaults, and one clear message naming the setting for each bad value."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from overnight.config import ConfigError, Settings, load_secrets, load_settings
from overnight.config_webhooks import DEFAULT_EVENTS, WebhookConfig, name_from_url, subscriptions

SECRET = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes....").decode()


def settings_from(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "c.toml"
    config.write_text(text)
    return load_settings({"config": str(config)}, environ={})


def test_defaults_all_four_events_every_project_and_a_name_from_the_url(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path, '[[webhooks]]\nurl = "https://hooks.example.com/overnight/"\nsecret_env = "HOOK_SECRET"\n'
    )
    assert settings.webhooks == (
        WebhookConfig("hooks.example.com/overnight", "https://hooks.example.com/overnight/", "HOOK_SECRET"),
    )
    assert DEFAULT_EVENTS == ("batch.completed", "batch.failed", "batch.cancelled", "batch.expired")
    assert (settings.webhook_timeout_s, settings.webhook_retry_for_s, settings.webhook_retry_base_s) == (
        10.0,
        86400,
        5.0,
    )


def test_every_field(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        "webhook_retry_base_s = 0.5\nwebhook_retry_for_s = 600\nwebhook_timeout_s = 2\n"
        '[[webhooks]]\nurl = "http://127.0.0.1:9000/hook"\nsecret_env = "A"\nevents = ["batch.failed"]\n'
        'project = "team-a"\nname = "team-a"\n'
        '[[webhooks]]\nurl = "http://127.0.0.1:9000/hook"\nsecret_env = "B"\n',
    )
    first, second = settings.webhooks
    assert first == WebhookConfig("team-a", "http://127.0.0.1:9000/hook", "A", ("batch.failed",), "team-a")
    assert second.name == "127.0.0.1:9000/hook"
    assert (settings.webhook_retry_base_s, settings.webhook_retry_for_s, settings.webhook_timeout_s) == (
        0.5,
        600,
        2.0,
    )
    subs = subscriptions(settings.webhooks)
    assert subs.names == ("team-a", "127.0.0.1:9000/hook")
    assert subs.get("team-a") is not None


def test_delivery_settings_from_the_environment() -> None:
    environ = {"OVERNIGHT_WEBHOOK_TIMEOUT_S": "3", "OVERNIGHT_WEBHOOK_RETRY_BASE_S": "0.25"}
    settings = load_settings({}, environ=environ)
    assert (settings.webhook_timeout_s, settings.webhook_retry_base_s) == (3.0, 0.25)


def test_endpoints_come_from_the_config_file_only() -> None:
    assert load_settings({}, environ={"OVERNIGHT_WEBHOOKS": "http://x"}).webhooks == ()


@pytest.mark.parametrize(
    ("table", "setting", "says"),
    [
        ('url = "ftp://hooks.example.com/x"\nsecret_env = "S"', "webhooks[0].url", "not an http(s) URL"),
        ('url = "hooks.example.com/x"\nsecret_env = "S"', "webhooks[0].url", "not an http(s) URL"),
        ('url = "http://:80/x"\nsecret_env = "S"', "webhooks[0].url", "not an http(s) URL"),
        ('url = "http://h:99999/x"\nsecret_env = "S"', "webhooks[0].url", "not an http(s) URL"),
        ('url = "https://user:pw@h/x"\nsecret_env = "S"', "webhooks[0].url", "credentials"),
        ('secret_env = "S"', "webhooks[0].url", "non-empty string"),
        ('url = "http://h/x"', "webhooks[0].secret_env", "non-empty string"),
        ('url = "http://h/x"\nsecret_env = "S"\nevents = ["batch.done"]', "webhooks[0].events", "batch.done"),
        ('url = "http://h/x"\nsecret_env = "S"\nevents = []', "webhooks[0].events", "a list of event types"),
        ('url = "http://h/x"\nsecret_env = "S"\nevents = "batch.failed"', "webhooks[0].events", "a list"),
        ('url = "http://h/x"\nsecret_env = "S"\nproject = ""', "webhooks[0].project", "non-empty"),
        ('url = "http://h/x"\nsecret_env = "S"\nsecret = "whsec_x"', "webhooks[0].secret", "unknown"),
    ],
)
def test_a_bad_table_names_its_field(tmp_path: Path, table: str, setting: str, says: str) -> None:
    with pytest.raises(ConfigError, match="setting") as raised:
        settings_from(tmp_path, f"[[webhooks]]\n{table}\n")
    assert f"setting '{setting}'" in str(raised.value)
    assert says in str(raised.value)


def test_two_endpoints_with_one_name_are_refused(tmp_path: Path) -> None:
    table = '[[webhooks]]\nurl = "http://h/x"\nsecret_env = "S"\n'
    with pytest.raises(ConfigError, match=r"webhooks\[1\]\.name.*used twice"):
        settings_from(tmp_path, table + table)


def test_webhooks_must_be_tables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="setting 'webhooks'"):
        settings_from(tmp_path, 'webhooks = "http://h/x"\n')


def test_the_secret_comes_from_the_variable_named(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, '[[webhooks]]\nurl = "http://h/x"\nsecret_env = "HOOK"\nname = "h"\n')
    secrets = load_secrets(settings, environ={"HOOK": SECRET})
    assert secrets.webhook_secrets == {"h": SECRET}
    assert SECRET not in repr(secrets)


@pytest.mark.parametrize("value", ["", "sk-live-1234567890", "whsec_", "whsec_@@@@not-base64@@@@"])
def test_a_missing_or_malformed_secret_stops_start_up_without_showing_it(tmp_path: Path, value: str) -> None:
    settings = settings_from(tmp_path, '[[webhooks]]\nurl = "http://h/x"\nsecret_env = "HOOK"\n')
    with pytest.raises(
        ConfigError, match=r"setting 'webhooks\[0\]\.secret_env': environment variable HOOK"
    ) as e:
        load_secrets(settings, environ={"HOOK": value} if value else {})
    if not value:
        assert "is not set" in str(e.value)
        return
    assert "whsec_ followed by base64" in str(e.value)
    hidden = value.removeprefix("whsec_")
    assert not hidden or hidden not in str(e.value)


def test_names_from_urls() -> None:
    assert name_from_url("https://hooks.example.com") == "hooks.example.com"
    assert name_from_url("http://127.0.0.1:8080/a/b/?token=x") == "127.0.0.1:8080/a/b"
