-- Issue #6: a successful login updates credentials.last_used_at; with the
-- 0001 trigger (any UPDATE) that notified every node to drop its whole auth
-- cache on every login. Notify only on columns a cached login depends on.
DROP TRIGGER credentials_auth_change ON credentials;
CREATE TRIGGER credentials_auth_change AFTER UPDATE OF
    user_id, label, password_hash, enabled,
    max_messages_per_minute, max_messages_per_hour, max_messages_per_day, max_recipients_per_day
    ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
CREATE TRIGGER credentials_auth_delete AFTER DELETE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
-- A new sender permission changes what a cached login may do.
CREATE TRIGGER sender_permissions_auth_insert AFTER INSERT ON sender_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
