-- Version 10: usage of synchronous requests (POST /v1/chat/completions and the rest, answered while
-- the client waits; docs/sync.md). The API process adds up its requests in memory and adds them here
-- in groups, per UTC day, project, model and tier (`default`: online; `flex`: service_tier flex). The
-- costs endpoint reads it beside the batches (docs/costs.md).
CREATE TABLE sync_usage (
    day               BIGINT  NOT NULL,   -- the first second of the UTC day
    project           TEXT    COLLATE "C" NOT NULL,
    model             TEXT    COLLATE "C" NOT NULL,
    tier              TEXT    COLLATE "C" NOT NULL,
    requests          BIGINT  NOT NULL,
    input_tokens      BIGINT  NOT NULL,
    output_tokens     BIGINT  NOT NULL,
    cached_tokens     BIGINT  NOT NULL,
    reasoning_tokens  BIGINT  NOT NULL,
    PRIMARY KEY (day, project, model, tier)
);
