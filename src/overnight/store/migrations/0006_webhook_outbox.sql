-- Version 6: the webhooks' outbox. A batch's event is written in the same transaction as the status
-- change that makes it, with one delivery per endpoint it goes to; senders lease due deliveries, and each
-- ends delivered (a 2xx) or given up (no 2xx for webhook_retry_for_s).
CREATE TABLE webhook_events (
    id          TEXT    NOT NULL PRIMARY KEY,
    type        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    batch_id    TEXT    NOT NULL,
    project     TEXT    NOT NULL
);

CREATE INDEX webhook_events_batch ON webhook_events (batch_id);

CREATE TABLE webhook_deliveries (
    event_id          TEXT    NOT NULL REFERENCES webhook_events (id),
    endpoint          TEXT    NOT NULL,
    attempts          BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at   BIGINT  NOT NULL,
    worker_id         TEXT,
    lease_expires_at  BIGINT,
    delivered_at      BIGINT,
    gave_up_at        BIGINT,
    last_status       BIGINT,
    last_error        TEXT,
    PRIMARY KEY (event_id, endpoint)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
