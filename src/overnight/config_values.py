"""Settings' plain values: how one raw value (a flag, a variable, a TOML value) becomes a typed one, and
ConfigError, which names the setting at fault. A leaf module: every config module parses with these."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class ConfigError(Exception):
    """A bad setting; the message names it."""


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"setting '{name}': expected an integer, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting '{name}': expected an integer, got {value!r}") from None
    if number <= 0 or (isinstance(value, float) and value != number):
        raise ConfigError(f"setting '{name}': expected a positive integer, got {value!r}")
    return number


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def port(name: str, value: Any) -> int:
    number = positive_int(name, value)
    if number > 65535:
        raise ConfigError(f"setting '{name}': {number} is not a TCP port")
    return number


def positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting '{name}': expected a number, got {value!r}") from None
    if isinstance(value, bool) or not number > 0:
        raise ConfigError(f"setting '{name}': expected a positive number, got {value!r}")
    return number


def text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"setting '{name}': expected a non-empty string, got {value!r}")
    return value


def optional_text(name: str, value: Any) -> str | None:
    return None if value in (None, "") else text(name, value)


def path(name: str, value: Any) -> Path:
    return Path(text(name, value))


def optional_path(name: str, value: Any) -> Path | None:
    return None if value in (None, "") else path(name, value)


def url(name: str, value: Any) -> str:
    given = text(name, value)
    parsed = urlparse(given)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"setting '{name}': {given!r} is not an http(s) URL")
    return given.rstrip("/")


def optional_url(name: str, value: Any) -> str | None:
    return None if value in (None, "") else url(name, value)


def string_list(name: str, value: Any) -> tuple[str, ...]:
    items = [item.strip() for item in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"setting '{name}': expected a list of strings, got {value!r}")
    return tuple(items)


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"setting '{name}': expected true or false, got {value!r}")
