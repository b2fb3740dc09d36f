"""SQL for usage and budgets on PostgreSQL ($n placeholders), and for listing every project's batches."""

from __future__ import annotations

from overnight.store.background_sql import VISIBLE_BATCH
from overnight.store.rows import BATCH_COLUMNS
from overnight.store.usage_rows import USAGE_COLUMNS

_USAGE = f"SELECT {USAGE_COLUMNS} FROM batches WHERE created_at >= $1 AND created_at < $2"
_GROUPS = " GROUP BY day, project, model"
USAGE_BY_DAY = _USAGE + _GROUPS  # $1 start, $2 end
PROJECT_USAGE_BY_DAY = _USAGE + " AND project = $3" + _GROUPS
ENQUEUED_TOKENS = (  # $1 project, $2 the statuses that hold tokens; a sum of BIGINT is NUMERIC: cast back
    "SELECT coalesce(sum(enqueued_tokens), 0)::bigint FROM batches WHERE project = $1 AND status = ANY($2)"
)

_BATCH_SELECT = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches"
LIST_ALL_BATCHES = f"{_BATCH_SELECT} WHERE {VISIBLE_BATCH} ORDER BY id DESC LIMIT $1"
LIST_ALL_BATCHES_AFTER = f"{_BATCH_SELECT} WHERE id < $1 AND {VISIBLE_BATCH} ORDER BY id DESC LIMIT $2"
