-- Version 3: uploads whose content is being streamed to blob storage and has no file record yet.
-- A row lives from the first byte until the record is added (or the content discarded), so content
-- that a crash left without a record is found again and deleted.
CREATE TABLE uploads (
    file_id     TEXT    COLLATE "C" NOT NULL PRIMARY KEY,
    started_at  BIGINT  NOT NULL
);

CREATE INDEX uploads_started_at ON uploads (started_at);
