-- Overnight metadata schema, version 1.
-- The PostgreSQL twin of migrations/0001_initial.sql, column for column (BYTEA for BLOB). Ids and
-- cursors compare byte by byte as in SQLite, whatever the database's locale: COLLATE "C".
-- Times are integer Unix seconds. Ids are time-sortable, so ORDER BY id is ORDER BY creation.

CREATE TABLE files (
    id          TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    project     TEXT    NOT NULL,
    bytes       BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    filename    TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,
    expires_at  BIGINT,
    status      TEXT    NOT NULL
);

CREATE INDEX files_project_id ON files (project, id);
CREATE INDEX files_expires_at ON files (expires_at);

CREATE TABLE batches (
    id                   TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    project              TEXT    NOT NULL,
    endpoint             TEXT    NOT NULL,
    input_file_id        TEXT    NOT NULL,
    completion_window    TEXT    NOT NULL,
    status               TEXT    NOT NULL,
    created_at           BIGINT  NOT NULL,
    expires_at           BIGINT  NOT NULL,
    metadata             TEXT,               -- JSON object or NULL
    output_expires_after BIGINT,
    model                TEXT,
    errors               TEXT    NOT NULL,   -- JSON array of {code, message, param, line}
    output_file_id       TEXT,
    error_file_id        TEXT,
    in_progress_at       BIGINT,
    finalizing_at        BIGINT,
    completed_at         BIGINT,
    failed_at            BIGINT,
    expired_at           BIGINT,
    cancelling_at        BIGINT,
    cancelled_at         BIGINT,
    -- request_counts: total is set by transitions; completed and failed only by recorded results
    total                BIGINT  NOT NULL DEFAULT 0,
    completed            BIGINT  NOT NULL DEFAULT 0,
    failed               BIGINT  NOT NULL DEFAULT 0,
    -- usage, summed from recorded results
    input_tokens         BIGINT  NOT NULL DEFAULT 0,
    output_tokens        BIGINT  NOT NULL DEFAULT 0,
    cached_tokens        BIGINT  NOT NULL DEFAULT 0,
    reasoning_tokens     BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX batches_project_id ON batches (project, id);
CREATE INDEX batches_status ON batches (status);
CREATE INDEX batches_input_file_id ON batches (input_file_id);

-- One row per finished input line: insert-if-absent on the primary key is the exactly-once record.
CREATE TABLE results (
    batch_id          TEXT    COLLATE "C" NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line_no           BIGINT  NOT NULL,
    kind              TEXT    NOT NULL,      -- succeeded | failed | not_run
    line              BYTEA   NOT NULL,      -- the exact bytes of the output/error file line
    input_tokens      BIGINT  NOT NULL DEFAULT 0,
    output_tokens     BIGINT  NOT NULL DEFAULT 0,
    cached_tokens     BIGINT  NOT NULL DEFAULT 0,
    reasoning_tokens  BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line_no)
);
