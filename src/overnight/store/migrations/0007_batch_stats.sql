-- Version 7: what the dashboard and GET /v1/batches/{id}/progress show. A running batch's counts now
-- and then (its leader samples them); its failed and not-run lines grouped by error code and upstream
-- status, counted as their results are recorded, so the groups outlive the results once the files are
-- written; and what each worker last reported of each backend it drives.
CREATE TABLE batch_samples (
    batch_id   TEXT    NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    at         BIGINT  NOT NULL,
    completed  BIGINT  NOT NULL,
    failed     BIGINT  NOT NULL,
    PRIMARY KEY (batch_id, at)
);

CREATE TABLE batch_error_groups (
    batch_id      TEXT    NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    code          TEXT    NOT NULL,
    status        BIGINT  NOT NULL,      -- the upstream's HTTP status; 0: no answer came
    line_count    BIGINT  NOT NULL,
    example_line  BIGINT  NOT NULL,      -- the lowest line number of the group
    example       BLOB    NOT NULL,      -- that line's error file line
    PRIMARY KEY (batch_id, code, status)
);

CREATE TABLE backend_reports (
    backend            TEXT    NOT NULL,
    worker_id          TEXT    NOT NULL,
    reported_at        BIGINT  NOT NULL,
    window_size        BIGINT  NOT NULL,
    concurrency_limit  BIGINT  NOT NULL,
    in_flight          BIGINT  NOT NULL,
    breaker            TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL,
    failures           BIGINT  NOT NULL,
    PRIMARY KEY (backend, worker_id)
);

CREATE INDEX backend_reports_at ON backend_reports (reported_at);
