-- Issue #17 item 3: the HTTP submission API.
-- An API token is bound to one credential; only its SHA-256 (hex) is kept.
-- A token credential's password_hash is '!api-token', which no password
-- verifies, so the token is its only way in. Disabling or deleting the
-- credential (or the user) disables or deletes the token with it.
ALTER TABLE credentials ADD COLUMN token_hash TEXT;
CREATE UNIQUE INDEX credentials_token_hash ON credentials (token_hash) WHERE token_hash IS NOT NULL;

-- Who submitted each message through the API, so GET /v1/messages/{id}
-- answers only that user, also after the queue row is gone.
CREATE TABLE api_messages (
    message_id   TEXT   PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recipients   TEXT   NOT NULL,          -- JSON array of the envelope recipients
    received_at  BIGINT NOT NULL
);
CREATE INDEX api_messages_received ON api_messages (received_at);
