-- Tenants and API keys, with row-level security.
--
-- Every transaction of the application sets, locally, either
-- `app.tenant_id` (acting for one tenant) or `app.platform = 'on'` (the
-- operator, and authentication's lookup by key prefix). Policies admit a row
-- when its tenant is the current one, or in platform scope. The application
-- works as a role that does not own these tables and has no BYPASSRLS, so
-- the policies apply to every query it runs, filtered or not.

CREATE FUNCTION bulkhead_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE FUNCTION bulkhead_platform_scope() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('app.platform', true), '') = 'on' $$;

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    tier        text NOT NULL CHECK (tier IN ('shared', 'isolated', 'dedicated')),
    status      text NOT NULL CHECK (status IN ('active', 'suspended')),
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     uuid REFERENCES tenants (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('operator', 'tenant')),
    name          text NOT NULL,
    prefix        text NOT NULL UNIQUE,
    hash          bytea NOT NULL,
    scope         text CHECK (scope IN ('tenant_app', 'tenant_admin')),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK ((kind = 'operator') = (tenant_id IS NULL)),
    CHECK ((kind = 'tenant') = (scope IS NOT NULL))
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
-- A tenant sees its own row; only the platform creates, changes or removes tenants.
CREATE POLICY tenants_read ON tenants FOR SELECT
    USING (id = bulkhead_current_tenant() OR bulkhead_platform_scope());
CREATE POLICY tenants_write ON tenants FOR ALL
    USING (bulkhead_platform_scope()) WITH CHECK (bulkhead_platform_scope());

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY api_keys_isolation ON api_keys FOR ALL
    USING (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope())
    WITH CHECK (tenant_id = bulkhead_current_tenant() OR bulkhead_platform_scope());
