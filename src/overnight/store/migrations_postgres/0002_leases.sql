-- Version 2: which worker drives a batch, until when. A worker renews its lease while it works;
-- another worker may take the batch once the lease has run out (its holder is presumed dead).
ALTER TABLE batches ADD COLUMN worker_id TEXT;
ALTER TABLE batches ADD COLUMN lease_expires_at BIGINT;
