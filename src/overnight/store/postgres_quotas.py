"""SQL for the per-project limits on PostgreSQL ($n placeholders): the bytes a project's files take, and
when its recent batches were created (docs/limits.md)."""

from __future__ import annotations

from overnight.store.background_sql import VISIBLE_BATCH

STORED_BYTES = (  # $1 project, $2 now; a sum of BIGINT is NUMERIC: cast back
    "SELECT coalesce(sum(bytes), 0)::bigint FROM files"
    " WHERE project = $1 AND (expires_at IS NULL OR expires_at > $2)"
)
NTH_LATEST_BATCH = (  # $1 project, $2 since, $3 how many later ones to skip
    f"SELECT created_at FROM batches WHERE project = $1 AND created_at >= $2 AND {VISIBLE_BATCH}"
    " ORDER BY created_at DESC LIMIT 1 OFFSET $3"
)
