-- Version 8: usage and budgets. A batch accepted under a project's enqueued-token budget keeps the
-- input tokens estimated at create time (0 where the project has no budget): the project's batches that
-- have not ended count them against the budget. The cost figures read batches by creation time.
ALTER TABLE batches ADD COLUMN enqueued_tokens BIGINT NOT NULL DEFAULT 0;

CREATE INDEX batches_created_at ON batches (created_at);
