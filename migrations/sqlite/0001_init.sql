-- postgate schema, SQLite. Same model as migrations/postgres; timestamps are Unix milliseconds.

CREATE TABLE users (
    id                       INTEGER PRIMARY KEY,
    username                 TEXT    NOT NULL CHECK (username = lower(username) AND length(username) BETWEEN 1 AND 255),
    enabled                  INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    max_messages_per_minute  INTEGER CHECK (max_messages_per_minute >= 0),
    max_messages_per_hour    INTEGER CHECK (max_messages_per_hour >= 0),
    max_messages_per_day     INTEGER CHECK (max_messages_per_day >= 0),
    max_recipients_per_day   INTEGER CHECK (max_recipients_per_day >= 0),
    max_concurrent_sessions  INTEGER CHECK (max_concurrent_sessions >= 0),
    normalize_line_endings   INTEGER CHECK (normalize_line_endings IN (0, 1)),
    created_at               INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    updated_at               INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
);
CREATE UNIQUE INDEX users_username_key ON users (username);

CREATE TABLE credentials (
    id                       INTEGER PRIMARY KEY,
    user_id                  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label                    TEXT    NOT NULL CHECK (length(label) BETWEEN 1 AND 64),
    password_hash            TEXT    NOT NULL,
    enabled                  INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    max_messages_per_minute  INTEGER CHECK (max_messages_per_minute >= 0),
    max_messages_per_hour    INTEGER CHECK (max_messages_per_hour >= 0),
    max_messages_per_day     INTEGER CHECK (max_messages_per_day >= 0),
    max_recipients_per_day   INTEGER CHECK (max_recipients_per_day >= 0),
    created_at               INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    updated_at               INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    last_used_at             INTEGER,
    UNIQUE (user_id, label)
);

CREATE TABLE sender_permissions (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    pattern     TEXT    NOT NULL CHECK (pattern = lower(pattern) AND pattern LIKE '%@%'),
    created_at  INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    UNIQUE (user_id, pattern)
);

CREATE TABLE dkim_keys (
    id           INTEGER PRIMARY KEY,
    domain       TEXT    NOT NULL CHECK (domain = lower(domain)),
    selector     TEXT    NOT NULL,
    algorithm    TEXT    NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    private_key  TEXT    NOT NULL,
    public_key   TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at   INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    retired_at   INTEGER,
    UNIQUE (domain, selector)
);

CREATE TABLE queue_messages (
    id            TEXT    PRIMARY KEY,
    sender        TEXT    NOT NULL,
    user_id       INTEGER REFERENCES users (id) ON DELETE SET NULL,
    username      TEXT,
    credential    TEXT,
    size          INTEGER NOT NULL,
    body          BLOB    NOT NULL,
    envid         TEXT,
    dsn_ret       TEXT    CHECK (dsn_ret IN ('FULL', 'HDRS')),
    is_dsn        INTEGER NOT NULL DEFAULT 0 CHECK (is_dsn IN (0, 1)),
    smtputf8      INTEGER NOT NULL DEFAULT 0 CHECK (smtputf8 IN (0, 1)),
    received_at   INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);

CREATE TABLE queue_recipients (
    id               INTEGER PRIMARY KEY,
    message_id       TEXT    NOT NULL REFERENCES queue_messages (id) ON DELETE CASCADE,
    recipient        TEXT    NOT NULL,
    notify           TEXT,
    orcpt            TEXT,
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'delivered', 'failed', 'expired')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    route_index      INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_until      INTEGER,
    last_upstream    TEXT,
    last_reply       TEXT,
    updated_at       INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER))
);
CREATE INDEX queue_recipients_due ON queue_recipients (next_attempt_at) WHERE status = 'queued';
CREATE INDEX queue_recipients_message ON queue_recipients (message_id);

CREATE TABLE delivery_log (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    message_id  TEXT    NOT NULL,
    recipient   TEXT    NOT NULL,
    upstream    TEXT,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'failed', 'expired', 'bounced', 'deleted')),
    attempt     INTEGER NOT NULL,
    reply       TEXT
);
CREATE INDEX delivery_log_at ON delivery_log (at);
CREATE INDEX delivery_log_message ON delivery_log (message_id);

CREATE TABLE limit_counters (
    key         TEXT    PRIMARY KEY,
    tat         INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX limit_counters_expires ON limit_counters (expires_at);
