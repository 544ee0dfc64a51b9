-- Issue #6: a successful login updates credentials.last_used_at (and names
-- password_hash in its SET list); with the 0001 trigger (any UPDATE) that
-- told every node to drop its whole auth cache on every login. Notify only
-- when a column a cached login depends on really changes (row trigger with
-- WHEN; PostgreSQL folds identical notifications of one transaction).
DROP TRIGGER credentials_auth_change ON credentials;
CREATE TRIGGER credentials_auth_change AFTER UPDATE ON credentials
    FOR EACH ROW
    WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id
       OR OLD.label IS DISTINCT FROM NEW.label
       OR OLD.password_hash IS DISTINCT FROM NEW.password_hash
       OR OLD.enabled IS DISTINCT FROM NEW.enabled
       OR OLD.max_messages_per_minute IS DISTINCT FROM NEW.max_messages_per_minute
       OR OLD.max_messages_per_hour IS DISTINCT FROM NEW.max_messages_per_hour
       OR OLD.max_messages_per_day IS DISTINCT FROM NEW.max_messages_per_day
       OR OLD.max_recipients_per_day IS DISTINCT FROM NEW.max_recipients_per_day)
    EXECUTE FUNCTION postgate_notify_auth_change();
CREATE TRIGGER credentials_auth_delete AFTER DELETE ON credentials
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();
-- A new sender permission changes what a cached login may do.
CREATE TRIGGER sender_permissions_auth_insert AFTER INSERT ON sender_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION postgate_notify_auth_change();

-- Rate-limit state is soft: losing it in a PostgreSQL crash or failover only
-- resets counters and lockouts. UNLOGGED skips the WAL (and its fsync) for
-- the one write per check, which otherwise dominates the cost per message.
ALTER TABLE limit_counters SET UNLOGGED;
