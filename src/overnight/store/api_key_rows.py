"""The api_keys table's columns and rows (migration 0012), for both stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from overnight.domain.api_keys import StoredApiKey

COLUMNS = ("id", "secret_hash", "project", "name", "admin", "hint", "created_at", "revoked_at")
SELECTED = ", ".join(COLUMNS)
ORDER = " ORDER BY created_at, id"


def key_values(key: StoredApiKey) -> tuple[Any, ...]:
    return (
        key.id,
        key.secret_hash,
        key.project,
        key.name,
        int(key.admin),
        key.hint,
        key.created_at,
        key.revoked_at,
    )


def key_from_row(row: Sequence[Any]) -> StoredApiKey:
    key_id, secret_hash, project, name, admin, hint, created_at, revoked_at = row
    return StoredApiKey(key_id, secret_hash, project, name, bool(admin), hint, created_at, revoked_at)
