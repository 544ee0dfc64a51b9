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
-- Only real changes of what a cached login depends on: a successful login
-- updates last_used_at (and names password_hash in its SET list).
CREATE TRIGGER credentials_auth_update AFTER UPDATE ON credentials
    WHEN OLD.user_id IS NOT NEW.user_id
      OR OLD.label IS NOT NEW.label
      OR OLD.password_hash IS NOT NEW.password_hash
      OR OLD.enabled IS NOT NEW.enabled
      OR OLD.max_messages_per_minute IS NOT NEW.max_messages_per_minute
      OR OLD.max_messages_per_hour IS NOT NEW.max_messages_per_hour
      OR OLD.max_messages_per_day IS NOT NEW.max_messages_per_day
      OR OLD.max_recipients_per_day IS NOT NEW.max_recipients_per_day
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER credentials_auth_delete AFTER DELETE ON credentials
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sender_permissions_auth_change AFTER INSERT ON sender_permissions
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sender_permissions_auth_update AFTER UPDATE ON sender_permissions
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER sender_permissions_auth_delete AFTER DELETE ON sender_permissions
BEGIN UPDATE auth_version SET version = version + 1 WHERE id = 1; END;
