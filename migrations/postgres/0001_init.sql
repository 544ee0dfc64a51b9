-- postgate schema, PostgreSQL. Forward-only; timestamps are Unix milliseconds (BIGINT)
-- so that both backends share one data model. Human view: to_timestamp(col / 1000.0).

CREATE TABLE users (
    id                       BIGSERIAL PRIMARY KEY,
    username                 TEXT    NOT NULL CHECK (username = lower(username) AND length(username) BETWEEN 1 AND 255),
    enabled                  BOOLEAN NOT NULL DEFAULT TRUE,
    -- per-user limit overrides (#6); NULL = config default
    max_messages_per_minute  INTEGER CHECK (max_messages_per_minute >= 0),
    max_messages_per_hour    INTEGER CHECK (max_messages_per_hour >= 0),
    max_messages_per_day     INTEGER CHECK (max_messages_per_day >= 0),
    max_recipients_per_day   INTEGER CHECK (max_recipients_per_day >= 0),
    max_concurrent_sessions  INTEGER CHECK (max_concurrent_sessions >= 0),
    normalize_line_endings   BOOLEAN,
    created_at               BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    updated_at               BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
);
CREATE UNIQUE INDEX users_username_key ON users (username);

-- A user holds one or more named credentials ("default", "laptop", "printer-3rd-floor").
CREATE TABLE credentials (
    id                       BIGSERIAL PRIMARY KEY,
    user_id                  BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label                    TEXT    NOT NULL CHECK (length(label) BETWEEN 1 AND 64),
    password_hash            TEXT    NOT NULL,
    enabled                  BOOLEAN NOT NULL DEFAULT TRUE,
    max_messages_per_minute  INTEGER CHECK (max_messages_per_minute >= 0),
    max_messages_per_hour    INTEGER CHECK (max_messages_per_hour >= 0),
    max_messages_per_day     INTEGER CHECK (max_messages_per_day >= 0),
    max_recipients_per_day   INTEGER CHECK (max_recipients_per_day >= 0),
    created_at               BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    updated_at               BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    last_used_at             BIGINT,
    UNIQUE (user_id, label)
);

-- Envelope senders a user may use: an exact address or '@domain' (lower case).
CREATE TABLE sender_permissions (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    pattern     TEXT   NOT NULL CHECK (pattern = lower(pattern) AND pattern LIKE '%@%'),
    created_at  BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    UNIQUE (user_id, pattern)
);

CREATE TABLE dkim_keys (
    id           BIGSERIAL PRIMARY KEY,
    domain       TEXT   NOT NULL CHECK (domain = lower(domain)),
    selector     TEXT   NOT NULL,
    algorithm    TEXT   NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
    private_key  TEXT   NOT NULL,          -- PKCS#8 PEM
    public_key   TEXT   NOT NULL,          -- base64, as published in DNS (p=)
    status       TEXT   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    created_at   BIGINT NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT,
    retired_at   BIGINT,
    UNIQUE (domain, selector)
);

-- The queue. One row per accepted message, one row per recipient.
CREATE TABLE queue_messages (
    id            TEXT    PRIMARY KEY,
    sender        TEXT    NOT NULL,          -- '' only for DSNs postgate generates
    user_id       BIGINT  REFERENCES users (id) ON DELETE SET NULL,
    username      TEXT,
    credential    TEXT,
    size          BIGINT  NOT NULL,
    body          BYTEA   NOT NULL,
    envid         TEXT,
    dsn_ret       TEXT    CHECK (dsn_ret IN ('FULL', 'HDRS')),
    is_dsn        BOOLEAN NOT NULL DEFAULT FALSE,
    smtputf8      BOOLEAN NOT NULL DEFAULT FALSE,
    received_at   BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);

CREATE TABLE queue_recipients (
    id               BIGSERIAL PRIMARY KEY,
    message_id       TEXT    NOT NULL REFERENCES queue_messages (id) ON DELETE CASCADE,
    recipient        TEXT    NOT NULL,
    notify           TEXT,                   -- RFC 3461 NOTIFY, as given
    orcpt            TEXT,                   -- RFC 3461 ORCPT, as given
    status           TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'delivered', 'failed', 'expired')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    route_index      INTEGER NOT NULL DEFAULT 0,  -- which upstream of the route to try next
    lease_owner      TEXT,
    lease_until      BIGINT,
    last_upstream    TEXT,
    last_reply       TEXT,
    updated_at       BIGINT  NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
);
CREATE INDEX queue_recipients_due ON queue_recipients (next_attempt_at) WHERE status = 'queued';
CREATE INDEX queue_recipients_message ON queue_recipients (message_id);

-- Every delivery attempt and final outcome, kept for [queue].log_retention.
CREATE TABLE delivery_log (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT  NOT NULL,
    message_id  TEXT    NOT NULL,
    recipient   TEXT    NOT NULL,
    upstream    TEXT,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('delivered', 'deferred', 'failed', 'expired', 'bounced', 'deleted')),
    attempt     INTEGER NOT NULL,
    reply       TEXT
);
CREATE INDEX delivery_log_at ON delivery_log (at);
CREATE INDEX delivery_log_message ON delivery_log (message_id);

-- Shared rate-limit state (GCRA theoretical arrival time) when [limits].backend = "postgres".
CREATE TABLE limit_counters (
    key         TEXT   PRIMARY KEY,
    tat         BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX limit_counters_expires ON limit_counters (expires_at);

-- Any change to an account tells every node to drop cached logins (#6):
-- plain SQL changes notify too, no extra step needed.
CREATE FUNCTION postgate_notify_auth_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('postgate_auth', '');
    RETURN NULL;
END $$;
CREATE TRIGGER users_auth_change AFTER UPDATE OR DELETE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
CREATE TRIGGER credentials_auth_change AFTER UPDATE OR DELETE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
CREATE TRIGGER sender_permissions_change AFTER UPDATE OR DELETE ON sender_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
