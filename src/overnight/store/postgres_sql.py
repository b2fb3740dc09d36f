"""Every SQL statement of the PostgreSQL store, in one place ($n placeholders, arrays for sets).

Status changes are compare-and-sets (`... AND status = ANY($n)`), leases are conditional UPDATEs: under
READ COMMITTED a second writer waits for the first and re-checks its WHERE clause on the row the first
one left, so of two racing claims or transitions exactly one matches.
"""

from __future__ import annotations

import dataclasses

from overnight.domain.models import FileObject
from overnight.store.background_sql import VISIBLE_BATCH, VISIBLE_FILE
from overnight.store.rows import BATCH_COLUMNS, TRANSITION_COLUMNS

# A fixed key for pg_advisory_lock: every process that migrates one database takes this lock first.
MIGRATION_LOCK_KEY = 0x6F7665726E69  # "overni"

# -- schema --------------------------------------------------------------------------------------

APPLIED_VERSIONS = "SELECT version FROM schema_migrations ORDER BY version"
RECORD_MIGRATION = "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)"
LOCK_MIGRATIONS = "SELECT pg_advisory_lock($1)"  # a session lock: held until the connection closes
SCHEMA_MIGRATIONS_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"

# -- files ---------------------------------------------------------------------------------------

FILE_COLUMNS = tuple(field.name for field in dataclasses.fields(FileObject))
_FILE_SELECT = f"SELECT {', '.join(FILE_COLUMNS)} FROM files"
_FILE_UPDATES = ", ".join(f"{name} = excluded.{name}" for name in FILE_COLUMNS if name != "id")

# One statement, so the record and the end of its upload commit together.
ADD_FILE = (
    "WITH ended AS (DELETE FROM uploads WHERE file_id = $1)"
    f" INSERT INTO files ({', '.join(FILE_COLUMNS)})"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(FILE_COLUMNS) + 1))})"
    f" ON CONFLICT (id) DO UPDATE SET {_FILE_UPDATES}"
)
BEGIN_UPLOAD = "INSERT INTO uploads (file_id, started_at) VALUES ($1, $2) ON CONFLICT (file_id) DO NOTHING"
END_UPLOAD = "DELETE FROM uploads WHERE file_id = $1"
ABANDONED_UPLOADS = "SELECT file_id FROM uploads WHERE started_at < $1 ORDER BY started_at, file_id LIMIT $2"
_OF_PROJECT = "project = COALESCE($2::text, project)"  # a project of None: any project (an admin's)
GET_FILE = f"{_FILE_SELECT} WHERE id = $1 AND {_OF_PROJECT}"
DELETE_FILE = f"DELETE FROM files WHERE id = $1 AND {_OF_PROJECT}"
FILES_EXPIRED_BEFORE = f"{_FILE_SELECT} WHERE expires_at <= $1 ORDER BY expires_at, id LIMIT $2"
FILE_IN_USE = "SELECT EXISTS (SELECT 1 FROM batches WHERE input_file_id = $1 AND status <> ALL($2::text[]))"


def list_files(*, purpose: bool, after: bool, ascending: bool, every_project: bool = False) -> str:
    """The page query: $1 project (none for `every_project`), then purpose and/or the `after` id when
    given, then the limit."""
    clauses, params = ([VISIBLE_FILE], 0) if every_project else (["project = $1", VISIBLE_FILE], 1)
    if purpose:
        params += 1
        clauses.append(f"purpose = ${params}")
    if after:
        params += 1
        clauses.append(f"id {'>' if ascending else '<'} ${params}")
    direction = "ASC" if ascending else "DESC"
    return f"{_FILE_SELECT} WHERE {' AND '.join(clauses)} ORDER BY id {direction} LIMIT ${params + 1}"


LIST_FILES = {
    (purpose, after, ascending, every): list_files(
        purpose=purpose, after=after, ascending=ascending, every_project=every
    )
    for purpose in (False, True)
    for after in (False, True)
    for ascending in (False, True)
    for every in (False, True)
}

# -- batches -------------------------------------------------------------------------------------


_BATCH_SELECT = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches"
ADD_BATCH = (
    f"INSERT INTO batches ({', '.join(BATCH_COLUMNS)})"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(BATCH_COLUMNS) + 1))})"
)
GET_BATCH = f"{_BATCH_SELECT} WHERE id = $1"
GET_PROJECT_BATCH = f"{_BATCH_SELECT} WHERE id = $1 AND project = $2"
LIST_BATCHES = f"{_BATCH_SELECT} WHERE project = $1 AND {VISIBLE_BATCH} ORDER BY id DESC LIMIT $2"
LIST_BATCHES_AFTER = (
    f"{_BATCH_SELECT} WHERE project = $1 AND id < $2 AND {VISIBLE_BATCH} ORDER BY id DESC LIMIT $3"
)
# $1 id, $2.. the TRANSITION_COLUMNS, then the expected statuses as one array.
TRANSITION_BATCH = (
    "UPDATE batches SET "
    + ", ".join(f"{column} = ${n}" for n, column in enumerate(TRANSITION_COLUMNS, start=2))
    + f" WHERE id = $1 AND status = ANY(${len(TRANSITION_COLUMNS) + 2}::text[])"
)
BATCHES_IN = f"{_BATCH_SELECT} WHERE status = ANY($1::text[]) ORDER BY id"
COUNT_BATCHES = "SELECT status, count(*) FROM batches GROUP BY status"
ENDED_BATCHES_WITH_RESULTS = (
    "SELECT id FROM batches WHERE status = ANY($1::text[])"
    " AND EXISTS (SELECT 1 FROM results WHERE results.batch_id = batches.id) ORDER BY id LIMIT $2"
)

# -- leases --------------------------------------------------------------------------------------

# $1 batch, $2 worker, $3 now, $4 lease seconds.
CLAIM_BATCH = (
    "UPDATE batches SET worker_id = $2, lease_expires_at = $3::bigint + $4::bigint WHERE id = $1"
    " AND (worker_id IS NULL OR worker_id = $2 OR lease_expires_at <= $3::bigint)"
)
RELEASE_BATCH = (
    "UPDATE batches SET worker_id = NULL, lease_expires_at = NULL WHERE id = $1 AND worker_id = $2"
)
RELEASE_ALL_LEASES = (
    "UPDATE batches SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL"
)

RELEASE_ALL_SLOTS = (
    "UPDATE backend_slots SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL"
)
FORGET_ALL_SLOT_WORKERS = "DELETE FROM backend_workers"

RELEASE_ALL_SHARD_LEASES = (
    "UPDATE shards SET worker_id = NULL, lease_expires_at = NULL WHERE worker_id IS NOT NULL"
)

# -- shards ------------------------------------------------------------------------------------------

SHARD_COLUMNS = "batch_id, shard_no, first_line, end_line, start_offset, shard_count, done, part"
# One array per column: batch_id, shard_no, first_line, end_line, start_offset, shard_count.
ADD_SHARDS = f"""
INSERT INTO shards ({SHARD_COLUMNS})
SELECT b, n, f, e, o, c, 0, NULL
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
    AS t (b, n, f, e, o, c)
ON CONFLICT (batch_id, shard_no) DO NOTHING
"""
# $1 worker, $2 now, $3 lease seconds. The pick: a shard not done, of a batch in progress, free or
# with a lease that ran out; earliest deadline (to the minute) first, then the project holding the
# fewest live shard leases. SKIP LOCKED: racing workers each take a different shard, none waits.
CLAIM_SHARD = """
WITH pick AS (
    SELECT s.batch_id, s.shard_no FROM shards s JOIN batches b ON b.id = s.batch_id
    WHERE s.done = 0 AND b.status = 'in_progress' AND b.expires_at > $2::bigint
      AND (s.worker_id IS NULL OR s.lease_expires_at <= $2::bigint)
    ORDER BY b.expires_at / 60,
      (SELECT count(*) FROM shards s2 JOIN batches b2 ON b2.id = s2.batch_id
       WHERE b2.project = b.project AND s2.done = 0 AND s2.worker_id IS NOT NULL
         AND s2.lease_expires_at > $2::bigint),
      s.batch_id, s.shard_no
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE shards SET worker_id = $1, lease_expires_at = $2::bigint + $3::bigint
FROM pick WHERE shards.batch_id = pick.batch_id AND shards.shard_no = pick.shard_no
RETURNING shards.batch_id, shards.shard_no, shards.first_line, shards.end_line, shards.start_offset,
          shards.shard_count, shards.done, shards.part
"""
# $1 batch, $2 shard, $3 worker, $4 now, $5 lease seconds.
RENEW_SHARD = (
    "UPDATE shards SET lease_expires_at = $4::bigint + $5::bigint"
    " WHERE batch_id = $1 AND shard_no = $2 AND worker_id = $3 AND done = 0"
)
# $1 batch, $2 shard, $3 worker, $4 the part files' name or NULL.
FINISH_SHARD = (
    "UPDATE shards SET done = 1, part = $4, worker_id = NULL, lease_expires_at = NULL"
    " WHERE batch_id = $1 AND shard_no = $2 AND worker_id = $3 AND done = 0"
)
RELEASE_SHARD = (
    "UPDATE shards SET worker_id = NULL, lease_expires_at = NULL"
    " WHERE batch_id = $1 AND shard_no = $2 AND worker_id = $3"
)
SHARDS_OF = f"SELECT {SHARD_COLUMNS} FROM shards WHERE batch_id = $1 ORDER BY shard_no"

# -- results -------------------------------------------------------------------------------------


# $1 batch, then one array per column: line_no, kind, line, and the four token counts. The rows come
# without duplicate lines and in line order (the same lock order in every transaction: no deadlock
# between two groups that overlap). The batch's row is locked first (`numbered`): the rows take the
# `seq` numbers after its `result_seq`, and a concurrent group of the same batch waits for this one to
# commit before it numbers its own, so results become visible in `seq` order. The INSERT's RETURNING
# holds only the rows that were new, so the counters grow by exactly those, in the same statement; a
# group of nothing new touches no batch.
# With `errors`, three more arrays name the error-file rows ($9 line_no, $10 code, $11 status, 0 for
# none): those that were new are counted into their error groups, in the same statement too.
def _record_results(*, errors: bool) -> str:
    returning = "line_no, line, kind" if errors else "kind"
    grouped = (
        """, grouped AS (
    INSERT INTO batch_error_groups (batch_id, code, status, line_count, example_line, example)
    SELECT $1, f.code, f.status, count(*), min(new.line_no), (array_agg(new.line ORDER BY new.line_no))[1]
    FROM new JOIN unnest($9::bigint[], $10::text[], $11::bigint[]) AS f (line_no, code, status)
        ON f.line_no = new.line_no
    GROUP BY f.code, f.status
    ORDER BY f.code, f.status
    ON CONFLICT (batch_id, code, status) DO UPDATE SET
        line_count = batch_error_groups.line_count + excluded.line_count,
        example = CASE WHEN excluded.example_line < batch_error_groups.example_line
                       THEN excluded.example ELSE batch_error_groups.example END,
        example_line = least(batch_error_groups.example_line, excluded.example_line)
)"""
        if errors
        else ""
    )
    return f"""
WITH numbered AS (
    SELECT result_seq FROM batches WHERE id = $1 FOR UPDATE
), incoming AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::bytea[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[]) WITH ORDINALITY
        AS t (line_no, kind, line, input_tokens, output_tokens, cached_tokens, reasoning_tokens, ord)
), new AS (
    INSERT INTO results (batch_id, line_no, kind, line, input_tokens, output_tokens, cached_tokens,
                         reasoning_tokens, seq)
    SELECT $1, line_no, kind, line, input_tokens, output_tokens, cached_tokens, reasoning_tokens,
           coalesce((SELECT result_seq FROM numbered), 0) + ord
    FROM incoming
    ON CONFLICT (batch_id, line_no) DO NOTHING
    RETURNING {returning}, input_tokens, output_tokens, cached_tokens, reasoning_tokens
), added AS (
    SELECT count(*) AS rows,
           count(*) FILTER (WHERE kind = 'succeeded') AS completed,
           count(*) FILTER (WHERE kind = 'failed') AS failed,
           coalesce(sum(input_tokens), 0)::bigint AS input_tokens,
           coalesce(sum(output_tokens), 0)::bigint AS output_tokens,
           coalesce(sum(cached_tokens), 0)::bigint AS cached_tokens,
           coalesce(sum(reasoning_tokens), 0)::bigint AS reasoning_tokens
    FROM new
), counted AS (
    UPDATE batches SET
        completed = batches.completed + added.completed,
        failed = batches.failed + added.failed,
        input_tokens = batches.input_tokens + added.input_tokens,
        output_tokens = batches.output_tokens + added.output_tokens,
        cached_tokens = batches.cached_tokens + added.cached_tokens,
        reasoning_tokens = batches.reasoning_tokens + added.reasoning_tokens,
        result_seq = batches.result_seq + cardinality($2::bigint[])
    FROM added
    WHERE batches.id = $1 AND added.rows > 0
){grouped}
SELECT rows FROM added
"""


RECORD_RESULTS = _record_results(errors=False)
RECORD_RESULTS_COUNTING_ERRORS = _record_results(errors=True)
FINISHED_LINES = "SELECT line_no FROM results WHERE batch_id = $1 AND line_no >= $2 AND line_no < $3"
# One page of a result stream: the lines after line $2, in line order (keyset paging: no connection is held
# between pages, however slowly the stream is read). Joining them in Python beat string_agg on the server
# (bench/pgdriver.py).
RESULT_LINES_PAGE = (
    "SELECT line_no, line FROM results WHERE batch_id = $1 AND line_no > $2 AND line_no < $5"
    " AND kind = ANY($3::text[]) ORDER BY line_no LIMIT $4"
)
DELETE_SOME_RESULTS = (
    "DELETE FROM results WHERE batch_id = $1 AND line_no IN"
    " (SELECT line_no FROM results WHERE batch_id = $1 ORDER BY line_no LIMIT $2)"
)

# -- a backend's slots -------------------------------------------------------------------------------

# $1 backend, $2 worker, $3 seen until.
SLOT_WANTED = (
    "INSERT INTO backend_workers (backend, worker_id, seen_until) VALUES ($1, $2, $3)"
    " ON CONFLICT (backend, worker_id) DO UPDATE SET seen_until = excluded.seen_until"
)
SLOT_UNWANTED = "DELETE FROM backend_workers WHERE backend = $1 AND worker_id = $2"
# $1 backend, $2 now.
SLOT_WORKERS = "SELECT worker_id FROM backend_workers WHERE backend = $1 AND seen_until > $2"
# $1 backend, $2 worker, $3 limit.
SLOTS_PAST_LIMIT = (
    "UPDATE backend_slots SET worker_id = NULL, lease_expires_at = NULL"
    " WHERE backend = $1 AND worker_id = $2 AND slot_no >= $3"
)
# $1 backend, $2 worker.
SLOTS_HELD = "SELECT slot_no FROM backend_slots WHERE backend = $1 AND worker_id = $2 ORDER BY slot_no"
# $1 backend, $2 slot numbers.
SLOTS_GIVE_BACK = (
    "UPDATE backend_slots SET worker_id = NULL, lease_expires_at = NULL"
    " WHERE backend = $1 AND slot_no = ANY($2::bigint[])"
)
# $1 backend, $2 worker, $3 lease end.
SLOTS_RENEW = "UPDATE backend_slots SET lease_expires_at = $3 WHERE backend = $1 AND worker_id = $2"
# $1 backend, $2 limit.
SLOTS_CREATE = (
    "INSERT INTO backend_slots (backend, slot_no) SELECT $1, n FROM generate_series(0, $2::bigint - 1) n"
    " ON CONFLICT (backend, slot_no) DO NOTHING"
)
# $1 backend, $2 worker, $3 limit, $4 now, $5 lease end, $6 how many. SKIP LOCKED: two workers taking
# slots at once each take different ones.
SLOTS_TAKE = """
WITH free AS (
    SELECT slot_no FROM backend_slots
    WHERE backend = $1 AND slot_no < $3 AND (worker_id IS NULL OR lease_expires_at <= $4)
    ORDER BY slot_no LIMIT $6
    FOR UPDATE SKIP LOCKED
)
UPDATE backend_slots SET worker_id = $2, lease_expires_at = $5
FROM free WHERE backend_slots.backend = $1 AND backend_slots.slot_no = free.slot_no
"""
