-- Issue #14: `postgate dkim generate --inactive` stores a key that never
-- signs until `postgate dkim activate`, so its DNS record can be published
-- first. Only keys with status 'active' AND NOT inactive sign.
ALTER TABLE dkim_keys ADD COLUMN inactive BOOLEAN NOT NULL DEFAULT false;
