-- Version 13: the batch creation rate per project (batch_create_rate_per_hour, docs/limits.md) counts
-- the project's batches created in the last hour: this index reads them newest first, and no others.
CREATE INDEX batches_project_created_at ON batches (project, created_at);
