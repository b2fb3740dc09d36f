-- Version 4: a batch in progress is run in shards, ranges of its input lines, each leased by one
-- worker at a time, so that many workers share one batch. `done` is 0 or 1; `part` names the part
-- files that hold exactly the shard's rows (NULL: read its rows from the results table).
CREATE TABLE shards (
    batch_id          TEXT    COLLATE "C" NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    shard_no          BIGINT  NOT NULL,
    first_line        BIGINT  NOT NULL,
    end_line          BIGINT  NOT NULL,
    start_offset      BIGINT  NOT NULL,
    shard_count       BIGINT  NOT NULL,
    done              BIGINT  NOT NULL DEFAULT 0,
    part              TEXT,
    worker_id         TEXT,
    lease_expires_at  BIGINT,
    PRIMARY KEY (batch_id, shard_no)
);

CREATE INDEX shards_open ON shards (done, batch_id);
