-- The operator's sandbox policy for a tenant (a JSON document whose shape
-- belongs to bulkhead-sandbox; empty = the default: code execution off).
ALTER TABLE tenant_settings ADD COLUMN sandbox jsonb NOT NULL DEFAULT '{}';
