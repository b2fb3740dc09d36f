-- Version 9: results while a batch runs, and idempotent creates (docs/partial-results.md).
-- Each result gets `seq` when it is recorded: the batch's `result_seq` counter, taken under the batch
-- row's lock in the recording transaction, so results become visible in `seq` order and a reader that
-- walks them in that order only ever sees new lines appended. Rows recorded before this version keep
-- their line number as `seq`; new ones come after them.
ALTER TABLE results ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
UPDATE results SET seq = line_no;
CREATE INDEX results_seq ON results (batch_id, seq);

ALTER TABLE batches ADD COLUMN result_seq BIGINT NOT NULL DEFAULT 0;
UPDATE batches SET result_seq = coalesce((SELECT max(line_no) FROM results WHERE results.batch_id = batches.id), 0);
-- The order of the batch's output and error files, fixed once: NULL until decided; 'recorded' (a reader
-- read the lines while the batch ran, so the files list them in `seq` order) or 'files' (nobody did:
-- the files are joined from the shards' parts).
ALTER TABLE batches ADD COLUMN result_order TEXT;

-- An Idempotency-Key of a project: the fingerprint of the request first sent with it and the id of the
-- object that request creates (chosen before it is created); `completed_at` once it exists.
CREATE TABLE idempotency_keys (
    project          TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL,
    fingerprint      TEXT    NOT NULL,
    object_id        TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    completed_at     BIGINT,
    PRIMARY KEY (project, idempotency_key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
