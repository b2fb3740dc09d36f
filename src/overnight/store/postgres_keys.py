"""The PostgreSQL store's SQL for API keys (migration 0012), $n placeholders."""

from __future__ import annotations

from overnight.store.api_key_rows import COLUMNS, ORDER, SELECTED

_PLACES = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
ADD = f"INSERT INTO api_keys ({SELECTED}) VALUES ({_PLACES})"
BY_HASH = f"SELECT {SELECTED} FROM api_keys WHERE secret_hash = $1"
LIST = f"SELECT {SELECTED} FROM api_keys" + ORDER
REVOKE = f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {SELECTED}"
ANY = "SELECT EXISTS (SELECT 1 FROM api_keys)"
