"""docs/settings.md documents every setting: its name, variable, flag, default and meaning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from overnight.config import FILE_ONLY, Settings, env_name

DOC = Path(__file__).parents[2] / "docs" / "settings.md"
FLAGS = {
    "host": "--host",
    "port": "--port",
    "data_dir": "--data-dir",
    "config": "--config",
    "upstream": "--upstream",
    "log_level": "--log-level",
}


def _default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) if value else "(none)"
    return "(none)" if value is None else str(value)


def expected_rows() -> list[str]:
    rows = []
    for field in dataclasses.fields(Settings):
        env = "—" if field.name in FILE_ONLY else f"`{env_name(field.name)}`"
        flag = f"`{FLAGS[field.name]}`" if field.name in FLAGS else "—"
        rows.append(
            f"| `{field.name}` | {env} | {flag} | `{_default(field.default)}` | {field.metadata['help']} |"
        )
    return rows


def test_every_setting_is_documented_as_declared() -> None:
    text = DOC.read_text()
    missing = [row for row in expected_rows() if row not in text]
    assert not missing, "docs/settings.md is out of date; expected rows:\n" + "\n".join(missing)


def test_no_undeclared_setting_is_documented() -> None:
    names = {field.name for field in dataclasses.fields(Settings)}
    documented = {line.split("`")[1] for line in DOC.read_text().splitlines() if line.startswith("| `")}
    assert documented <= names
