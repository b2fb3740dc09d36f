-- Version 5: a backend's limits hold across every worker. Its `max_concurrency` is a set of slots
-- that workers lease (a request in flight needs one), and the workers that want slots say so with a
-- heartbeat row, so that each can work out its fair share.
CREATE TABLE backend_slots (
    backend           TEXT    COLLATE "C" NOT NULL,
    slot_no           BIGINT  NOT NULL,
    worker_id         TEXT,
    lease_expires_at  BIGINT,
    PRIMARY KEY (backend, slot_no)
);

CREATE TABLE backend_workers (
    backend     TEXT    COLLATE "C" NOT NULL,
    worker_id   TEXT    COLLATE "C" NOT NULL,
    seen_until  BIGINT  NOT NULL,
    PRIMARY KEY (backend, worker_id)
);
