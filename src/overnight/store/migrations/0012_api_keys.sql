-- Version 12: API keys kept in the store (`overnight keys create|list|revoke`, docs/auth.md). Only the
-- SHA-256 of each secret is kept (hex), never the secret: it is shown once, when the key is made. `hint` is
-- what may be shown of it (`sk-ovn-…abcd`). `admin` is 1 for a key that sees every project. A revoked key
-- keeps its row (revoked_at set), so the list tells what it was and a server with only revoked keys stays
-- closed.
CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    secret_hash  TEXT    NOT NULL,
    project      TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    admin        BIGINT  NOT NULL,
    hint         TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);

CREATE UNIQUE INDEX api_keys_secret_hash ON api_keys (secret_hash);
