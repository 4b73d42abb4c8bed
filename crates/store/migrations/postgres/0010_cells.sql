-- Cells: other Bulkhead deployments, each with its own store, that serve
-- the control plane's `dedicated` tenants. The control plane keeps the
-- registry and the routing table; the tenant's data lives in its cell.
--
-- `credential` is an operator key of the cell, sealed with the platform's
-- master key (ChaCha20-Poly1305, the cell's name as associated data); no
-- column holds it in plaintext. `credential_prefix` is the key's visible
-- start, for people.
--
-- `tenant_placements` is platform data about a tenant (where it is
-- served), not the tenant's own data: it stays on the control plane when
-- the tenant's rows move to a cell, so its column is `tenant`, not
-- `tenant_id`, and it is never part of a tenant's export. Both tables are
-- read and written in platform scope only (authentication's routing
-- lookup runs there, like its key lookup). A cell that still has tenants
-- placed in it cannot be removed (RESTRICT).
CREATE TABLE cells (
    id                 uuid PRIMARY KEY,
    name               text NOT NULL UNIQUE,
    base_url           text NOT NULL,
    credential         bytea NOT NULL,
    credential_nonce   bytea NOT NULL,
    credential_prefix  text NOT NULL,
    created_at         timestamptz NOT NULL
);

CREATE TABLE tenant_placements (
    tenant     uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    cell_id    uuid NOT NULL REFERENCES cells (id) ON DELETE RESTRICT,
    placed_at  timestamptz NOT NULL
);

CREATE INDEX tenant_placements_cell ON tenant_placements (cell_id);

ALTER TABLE cells ENABLE ROW LEVEL SECURITY;
CREATE POLICY cells_platform ON cells FOR ALL
    USING (bulkhead_platform_scope()) WITH CHECK (bulkhead_platform_scope());

ALTER TABLE tenant_placements ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_placements_platform ON tenant_placements FOR ALL
    USING (bulkhead_platform_scope()) WITH CHECK (bulkhead_platform_scope());
