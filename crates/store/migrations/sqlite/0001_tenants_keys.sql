-- Tenants and API keys. Ids are UUIDv7 text, so ORDER BY id is creation order.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    tier        TEXT NOT NULL CHECK (tier IN ('shared', 'isolated', 'dedicated')),
    status      TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT REFERENCES tenants (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('operator', 'tenant')),
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL UNIQUE,
    hash          BLOB NOT NULL,
    scope         TEXT CHECK (scope IN ('tenant_app', 'tenant_admin')),
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT,
    last_used_at  TEXT,
    CHECK ((kind = 'operator') = (tenant_id IS NULL)),
    CHECK ((kind = 'tenant') = (scope IS NOT NULL))
) STRICT;

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);
