-- Version 11: background responses (POST /v1/responses with background: true, docs/background.md). Each
-- runs as a one-line batch of its project; `response` is the Response object as created (what it echoes
-- of the request), as JSON. That batch and its files (input, output, error) are hidden: the list queries
-- (GET /v1/batches, GET /v1/files, the dashboard) leave out the ids found here.
CREATE TABLE background_responses (
    batch_id    TEXT    COLLATE "C" NOT NULL PRIMARY KEY REFERENCES batches (id),
    response    TEXT    NOT NULL
);

CREATE TABLE background_files (
    file_id     TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    batch_id    TEXT    COLLATE "C" NOT NULL
);
