"""The `[[webhooks]]` settings: endpoints that receive batch events, and the secrets they are signed with.

```toml
[[webhooks]]
url = "https://hooks.example.com/overnight"
secret_env = "OVERNIGHT_WEBHOOK_SECRET"        # the variable holds whsec_...
events = ["batch.completed", "batch.failed"]   # default: all four
project = "team-a"                             # default: every project
name = "team-a-hooks"                          # default: from the url (hooks.example.com/overnight)
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn
from urllib.parse import urlsplit

from overnight.config_values import ConfigError
from overnight.domain.events import EVENT_TYPES, Subscription, Subscriptions
from overnight.webhooks.signing import secret_key

DEFAULT_EVENTS = tuple(EVENT_TYPES.values())


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    name: str
    url: str
    secret_env: str  # the name of the variable that holds the secret
    events: tuple[str, ...] = DEFAULT_EVENTS
    project: str | None = None

    def subscription(self) -> Subscription:
        return Subscription(self.name, self.url, frozenset(self.events), self.project)


def _fail(setting: str, problem: str) -> NoReturn:
    raise ConfigError(f"setting '{setting}': {problem}")


def _text(setting: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(setting, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _webhook_url(setting: str, value: Any) -> str:
    text = _text(setting, value)
    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not port_ok or parts.scheme not in ("http", "https") or not parts.hostname:
        _fail(setting, f"{text!r} is not an http(s) URL")
    if parts.username is not None or parts.password is not None or parts.fragment:
        _fail(setting, "a webhook URL may hold neither credentials nor a #fragment")
    return text


def _event_types(setting: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        _fail(setting, f"expected a list of event types such as {list(DEFAULT_EVENTS)}, got {value!r}")
    chosen: list[str] = []
    for item in value:
        if item not in DEFAULT_EVENTS:
            _fail(setting, f"{item!r} is not one of {', '.join(DEFAULT_EVENTS)}")
        if item not in chosen:
            chosen.append(item)
    return tuple(chosen)


def name_from_url(url: str) -> str:
    """An endpoint's default name: its host, port and path (`hooks.example.com/overnight`)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.hostname}{port}{parts.path.rstrip('/')}"


def parse_webhooks(name: str, value: Any) -> tuple[WebhookConfig, ...]:
    """The `[[webhooks]]` tables; a ConfigError naming the first bad field."""
    if not isinstance(value, list):
        _fail(name, "expected [[webhooks]] tables")
    known = {f.name for f in fields(WebhookConfig)}
    webhooks: list[WebhookConfig] = []
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            _fail(where, "expected a table with url and secret_env")
        unknown = sorted(set(entry) - known)
        if unknown:
            _fail(f"{where}.{unknown[0]}", "unknown webhook setting")
        url = _webhook_url(f"{where}.url", entry.get("url"))
        project = entry.get("project")
        webhook = WebhookConfig(
            name=_text(f"{where}.name", entry["name"]) if "name" in entry else name_from_url(url),
            url=url,
            secret_env=_text(f"{where}.secret_env", entry.get("secret_env")),
            events=_event_types(f"{where}.events", entry.get("events", list(DEFAULT_EVENTS))),
            project=None if project is None else _text(f"{where}.project", project),
        )
        if any(other.name == webhook.name for other in webhooks):
            _fail(f"{where}.name", f"endpoint name {webhook.name!r} is used twice; give each a `name`")
        webhooks.append(webhook)
    return tuple(webhooks)


def read_webhook_secrets(webhooks: Sequence[WebhookConfig], environ: Mapping[str, str]) -> dict[str, str]:
    """Each endpoint's `whsec_` secret, by endpoint name, from the variable its `secret_env` names. The
    messages name the variable, never what it holds."""
    found: dict[str, str] = {}
    for index, webhook in enumerate(webhooks):
        where = f"webhooks[{index}].secret_env"
        secret = environ.get(webhook.secret_env, "").strip()
        if not secret:
            _fail(where, f"environment variable {webhook.secret_env} is not set")
        try:
            secret_key(secret)
        except ValueError:
            _fail(where, f"environment variable {webhook.secret_env} does not hold whsec_ followed by base64")
        found[webhook.name] = secret
    return found


def subscriptions(webhooks: Sequence[WebhookConfig]) -> Subscriptions:
    return Subscriptions(webhook.subscription() for webhook in webhooks)
