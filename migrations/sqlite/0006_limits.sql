-- Issue #6: cached logins must be dropped when an account changes, also when
-- the change comes from another process (the CLI, plain SQL). SQLite has no
-- LISTEN/NOTIFY, so every relevant change bumps one counter that the server
-- polls (cheap: one primary-key read).
CREATE TABLE auth_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
);
INSERT INTO auth_version (id, version) VALUES (1, 0);

CREATE TRIGGER users_auth_update AFTER UPDATE ON users
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER users_auth_delete AFTER DELETE ON users
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
-- Not last_used_at/updated_at: a successful login must not invalidate caches.
CREATE TRIGGER credentials_auth_update AFTER UPDATE OF
    user_id, label, password_hash, enabled,
    max_messages_per_minute, max_messages_per_hour, max_messages_per_day, max_recipients_per_day
    ON credentials
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER credentials_auth_delete AFTER DELETE ON credentials
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sender_permissions_auth_change AFTER INSERT ON sender_permissions
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sender_permissions_auth_update AFTER UPDATE ON sender_permissions
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sender_permissions_auth_delete AFTER DELETE ON sender_permissions
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
