"""SQL for the usage of synchronous requests on PostgreSQL ($n placeholders)."""

from __future__ import annotations

from overnight.store.sync_usage_rows import COLUMNS, UPSERT_TAIL

_PLACES = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
ADD_SYNC_USAGE = f"INSERT INTO sync_usage ({', '.join(COLUMNS)}) VALUES ({_PLACES})" + UPSERT_TAIL
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM sync_usage WHERE day >= $1 AND day < $2"
SYNC_USAGE_BY_DAY = _SELECT  # $1 start, $2 end
PROJECT_SYNC_USAGE_BY_DAY = _SELECT + " AND project = $3"
