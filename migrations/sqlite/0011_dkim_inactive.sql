-- Issue #14: `postgate dkim generate --inactive` stores a key that never
-- signs until `postgate dkim activate`, so its DNS record can be published
-- first. Only keys with status 'active' AND inactive = 0 sign.
ALTER TABLE dkim_keys ADD COLUMN inactive INTEGER NOT NULL DEFAULT 0 CHECK (inactive IN (0, 1));
